"""Degenerate maps, tied regions and the floored Max-Sensitivity, on hand cases (docs/statistics.md)."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from camfaith import postprocess, scoring
from camfaith.metrics import THESIS, aopc, common, max_sensitivity

# ---------- ties in AOPC's region ranking ----------


def test_tied_share_counts_regions_that_equal_another():
    means = torch.tensor([[[1.0, 1.0], [0.5, 0.2]], [[0.0, 0.0], [0.0, 0.0]], [[4.0, 3.0], [2.0, 1.0]]])
    torch.testing.assert_close(aopc.tied_share(means), torch.tensor([0.5, 1.0, 0.0]))


def test_random_ties_follow_the_permutation_and_keep_distinct_regions_in_descending_order():
    means = torch.tensor([[[0.0, 0.9], [0.0, 0.0]]])  # region 1 first; regions 0, 2, 3 tie at zero
    permutation = torch.tensor([[3, 1, 0, 2]])
    assert aopc.region_order(means, permutation).tolist() == [[1, 3, 0, 2]]
    assert aopc.region_order(means).tolist() == [[1, 0, 2, 3]]  # the study: row-major


def test_tie_permutations_are_seeded_by_image_and_region_size_only():
    device = torch.device("cpu")
    first = aopc.tie_permutations(16, ["a", "b"], 8, 0, device)
    assert torch.equal(first, aopc.tie_permutations(16, ["a", "b"], 8, 0, device))  # every method gets the same
    assert sorted(first[0].tolist()) == list(range(16))
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first[0], aopc.tie_permutations(16, ["a"], 4, 0, device)[0])


class MeanModel(nn.Module):
    """Class-0 logit = mean of the top half of the image: perturbing the top rows first changes it first."""

    def forward(self, x):
        top = x[:, :, : x.shape[2] // 2].mean(dim=(1, 2, 3))
        return torch.stack([4 * top, torch.zeros_like(top)], dim=1)


def test_random_ties_change_the_curve_of_an_all_zero_map_but_not_of_a_map_without_ties():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 8, 8) + 1.0
    targets = torch.zeros(2, dtype=torch.long)
    args = dict(region_px=2, zero_pad=False, noise="per_step", seed=0, batch_size=16)
    distinct = torch.arange(64, dtype=torch.float32).flip(0).view(1, 8, 8).repeat(2, 1, 1)
    row_major = aopc.morf_curves(MeanModel(), images, distinct, targets, ["a", "b"], ties="row_major", **args)
    random = aopc.morf_curves(MeanModel(), images, distinct, targets, ["a", "b"], ties="random", **args)
    torch.testing.assert_close(row_major, random)
    zero = torch.zeros(2, 8, 8)
    row_major = aopc.morf_curves(MeanModel(), images, zero, targets, ["a", "b"], ties="row_major", **args)
    random = aopc.morf_curves(MeanModel(), images, zero, targets, ["a", "b"], ties="random", **args)
    assert not torch.allclose(row_major, random)
    # row-major ties perturb the top half (which the model reads) first: the raster-scan artefact
    assert aopc.aopc_from_curves(row_major).abs().mean() > aopc.aopc_from_curves(random).abs().mean()


def test_unknown_tie_mode_is_refused():
    with pytest.raises(ValueError, match="ties must be one of"):
        aopc.morf_curves(MeanModel(), torch.rand(1, 3, 4, 4), torch.zeros(1, 4, 4), torch.zeros(1, dtype=torch.long), ["a"], 2, False,
                         "per_step", 0, 4, ties="column_major")


def test_thesis_keeps_the_study_row_major_order():
    assert THESIS["aopc"]["ties"] == "row_major"


# ---------- degenerate maps ----------


def test_map_states_are_exclusive_and_follow_relu():
    maps = np.stack([
        np.array([[np.nan, 1.0], [0.0, 0.0]]),   # non-finite
        np.array([[-1.0, -2.0], [0.0, -3.0]]),   # zero after ReLU, not without
        np.full((2, 2), 0.25),                   # constant
        np.array([[0.0, 1.0], [0.5, 0.0]]),      # fine
        np.full((2, 2), -1.0),                   # zero after ReLU; constant without
    ]).astype(np.float32)
    with_relu = common.map_states(maps, relu=True)
    assert with_relu["map_nonfinite"].tolist() == [True, False, False, False, False]
    assert with_relu["map_zero"].tolist() == [False, True, False, False, True]
    assert with_relu["map_constant"].tolist() == [False, False, True, False, False]
    without = common.map_states(maps, relu=False)
    assert without["map_zero"].tolist() == [False, False, False, False, False]
    assert without["map_constant"].tolist() == [False, False, True, False, True]
    total = sum(states.astype(int) for states in with_relu.values())
    assert total.max() == 1


# ---------- floored Max-Sensitivity ----------


def fixed_maps(perturbed: torch.Tensor):
    """An explain function that ignores its input and returns ``perturbed [h, w]`` for every copy."""
    def explain(noisy, targets, seeds):
        return perturbed.expand(len(noisy), *perturbed.shape).clone()
    return explain


POST = postprocess.PostProcess(relu=False, minmax=False, upsample="none")
RUN = dict(targets=torch.zeros(1, dtype=torch.long), image_ids=["a"], seeds=[0], radius=0.1, samples=3, post=POST, seed=0, batch_size=4)


def sensitivity(reference: torch.Tensor, perturbed: torch.Tensor, **kwargs) -> torch.Tensor:
    images = torch.zeros(1, 1, *reference.shape)
    return max_sensitivity.max_sensitivity(fixed_maps(perturbed), images, reference.unsqueeze(0), **RUN, **kwargs)


def test_floor_bounds_a_near_zero_reference_and_says_so():
    pattern = torch.tensor([[3.0, 0.0], [0.0, 4.0]])  # norm 5
    tiny = pattern * 1e-6
    plain = sensitivity(tiny, pattern, normalise=True)
    assert plain.item() > 1e5  # what the plain ratio does with a near-zero reference
    floored = torch.zeros(1, dtype=torch.bool)
    value = sensitivity(tiny, pattern, normalise=True, floor=0.1, floored=floored)
    # ‖pattern − tiny‖ / (0.1 · ‖pattern‖) = (1 − 1e-6) · 5 / 0.5
    torch.testing.assert_close(value, torch.tensor([10.0 * (1 - 1e-6)]))
    assert floored.tolist() == [True]
    assert value.item() <= 1 + 1 / 0.1


def test_floor_leaves_a_normal_reference_alone_and_is_scale_free():
    reference = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    perturbed = torch.tensor([[3.0, 1.0], [0.0, 4.0]])
    floored = torch.ones(1, dtype=torch.bool)
    value = sensitivity(reference, perturbed, normalise=True, floor=0.1, floored=floored)
    torch.testing.assert_close(value, sensitivity(reference, perturbed, normalise=True))
    torch.testing.assert_close(value, torch.tensor([1 / 5]))
    assert floored.tolist() == [False]
    torch.testing.assert_close(sensitivity(1000 * reference, 1000 * perturbed, normalise=True, floor=0.1), value)


def test_all_zero_maps_are_stable_with_the_floor_and_undefined_without():
    zero = torch.zeros(2, 2)
    assert sensitivity(zero, zero, normalise=True, floor=0.1).tolist() == [0.0]
    assert torch.isnan(sensitivity(zero, zero, normalise=True)).all()


def test_default_floor_is_documented_in_the_default_config():
    from pathlib import Path

    import yaml

    config = yaml.safe_load((Path(__file__).parents[1] / "config" / "config.yaml").read_text())
    assert config["metrics"]["max_sensitivity"]["normalise_floor"] == max_sensitivity.DEFAULT_FLOOR
    assert config["metrics"]["aopc"]["ties"] == "random"


# ---------- progress of a score job ----------


def test_progress_logs_at_a_steady_pace_with_rate_and_time_left(caplog):
    now = [0.0]
    progress = scoring.Progress("aopc", "gradcam", total=100, every=30.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="camfaith.scoring"):
        for _ in range(10):
            now[0] += 10.0
            progress.advance(10)
    lines = [record.getMessage() for record in caplog.records]
    assert len(lines) == 4  # at 30 s, 60 s, 90 s and at the end (100 s)
    assert lines[0] == "aopc of gradcam: 30 of 100 images (30 %), 1.00 images/s, about 1 min 10 s left"
    assert lines[-1].startswith("aopc of gradcam: 100 of 100 images (100 %)") and lines[-1].endswith("about 0 s left")
