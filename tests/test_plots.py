"""Figure helpers whose numbers a reader relies on: the running AOPC, the scores under each overlay
panel, the images the disagreement figure picks; and that each figure draws on a real run's files."""

import numpy as np
import pandas as pd
import pytest

from camfaith import plots


def curve_rows(method: str, curves: np.ndarray, region: float = 8.0) -> list[dict]:
    """``probability`` rows: one curve per image (``curves[i, k]``, steps 0…L)."""
    return [{"dataset": "d", "model": "m", "method": method, "metric": "aopc", "image_id": f"i{i}", "parameter_value": region,
             "quantity": "probability", "step": k, "value": float(value)}
            for i, curve in enumerate(curves) for k, value in enumerate(curve)]


def test_running_aopc_ends_at_the_aopc_and_follows_the_studys_cumulative_mean():
    curves = np.array([[0.9, 0.5, 0.2, 0.1], [0.8, 0.8, 0.4, 0.0]])
    running = plots.running_aopc_curve(pd.DataFrame(curve_rows("gradcam", curves)))
    drops = (curves[:, :1] - curves).mean(axis=0)  # [0, 0.2, 0.55, 0.8]
    assert running == pytest.approx(np.cumsum(drops) / np.arange(1, 5))
    assert running[-1] == pytest.approx(np.mean((curves[:, :1] - curves).mean(axis=1)))  # the AOPC of the tables
    assert running[0] == 0.0


def test_an_undefined_curve_counts_nowhere_in_the_running_aopc():
    curves = np.array([[0.9, 0.5, 0.2], [np.nan, np.nan, np.nan]])
    running = plots.running_aopc_curve(pd.DataFrame(curve_rows("gradcam", curves)))
    assert running == pytest.approx(np.cumsum([0.0, 0.4, 0.7]) / np.arange(1, 4))


def per_image(method: str, metric: str, values: dict[float, list[float]]) -> list[dict]:
    return [{"method": method, "metric": metric, "image_id": f"i{i}", "parameter_value": setting, "quantity": metric, "value": value}
            for setting, column in values.items() for i, value in enumerate(column)]


def test_panel_scores_show_aopc_on_the_finest_grid_and_max_sensitivity_at_the_smallest_radius():
    scores = pd.DataFrame(per_image("gradcam", "aopc", {16.0: [0.9, 0.8], 8.0: [0.41234, np.nan]})
                          + per_image("gradcam", "max_sensitivity", {0.2: [5.0, 5.0], 0.05: [0.1, 0.2]})
                          + per_image("gradcam", "haas", {np.nan: [1.0, 0.0]}))
    notes = plots.panel_scores(scores)
    assert notes[("gradcam", "i0")] == "AOPC 8 px: 0.412\nMS r=0.05: 0.100"
    assert notes[("gradcam", "i1")] == "AOPC 8 px: n/a\nMS r=0.05: 0.200"  # an undefined value says so


def test_largest_differences_pick_the_images_where_the_pair_disagrees_most_by_absolute_difference():
    scores = pd.DataFrame(per_image("hirescam", "aopc", {16.0: [0.0, 9.0, 9.0, 9.0, 9.0], 8.0: [0.5, 0.5, 0.9, 0.1, 0.5]})
                          + per_image("gradcam", "aopc", {16.0: [9.0, 0.0, 0.0, 0.0, 0.0], 8.0: [0.5, 0.4, 0.5, np.inf, 0.8]}))
    finest, difference = plots.largest_differences(scores, ["hirescam", "gradcam"], 2)
    assert finest == 8.0  # the 16 px differences (±9) are on another grid
    assert list(difference.index) == ["i2", "i4"] and difference.to_numpy() == pytest.approx([0.4, -0.3])  # i3 is undefined
