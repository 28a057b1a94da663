"""Pixel decoding per PIL mode: ``ImageTable.load_unit`` values and ``check_image`` quarantine reasons."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from camfaith.data.images import ImageTable, Preprocessing, to_unit_rgb
from camfaith.data.index import build_index, check_image
from camfaith.data.pixels import UnsupportedImageError, image_problem


def save(image: Image.Image, path: Path, mode: str) -> Path:
    """Write ``image`` to ``path`` and check that PIL opens it again in ``mode`` (else the test would test another mode)."""
    image.save(path)
    with Image.open(path) as reopened:
        assert reopened.mode == mode
    return path


def load_unit(path: Path) -> torch.Tensor:
    """``[3, H, W]`` pixels of the square image at ``path`` through ``ImageTable.load_unit``, at its own size (no resampling)."""
    with Image.open(path) as image:
        size = image.width
        assert image.height == size
    rows = pd.DataFrame({"path": [path.name], "image_id": [path.stem], "label_index": [0]})
    table = ImageTable(path.parent, rows, Preprocessing(image_size=size))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. PIL's warning about palette transparency must not reach a data loader
        return table.load_unit(0)


def grey(values: list[list[float]]) -> torch.Tensor:
    """Expected ``[3, H, W]`` float32 tensor: one grey plane replicated to three channels."""
    plane = torch.tensor(values, dtype=torch.float32)
    return plane.expand(3, -1, -1)


def rgb(pixels: list[list[tuple[int, int, int]]]) -> torch.Tensor:
    """Expected ``[3, H, W]`` float32 tensor from 8-bit RGB triples."""
    return torch.tensor(pixels, dtype=torch.float32).permute(2, 0, 1) / 255


def assert_pixels(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.dtype == torch.float32
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, rtol=0, atol=1e-7)


# --- 8-bit modes: PIL's convert("RGB"), alpha discarded ------------------------------------------------


def test_mode_1(tmp_path):
    image = Image.fromarray(np.array([[False, True], [True, False]]))
    path = save(image, tmp_path / "bilevel.png", "1")
    assert check_image(path) is None
    assert_pixels(load_unit(path), grey([[0, 1], [1, 0]]))


def test_mode_l(tmp_path):
    path = save(Image.fromarray(np.array([[0, 64], [128, 255]], dtype=np.uint8)), tmp_path / "grey.png", "L")
    assert check_image(path) is None
    assert_pixels(load_unit(path), grey([[0, 64 / 255], [128 / 255, 1]]))


def test_mode_la_discards_alpha(tmp_path):
    values = np.array([[[10, 255], [200, 0]], [[90, 128], [255, 255]]], dtype=np.uint8)  # [H, W, (L, A)]
    path = save(Image.fromarray(values, mode="LA"), tmp_path / "grey_alpha.png", "LA")
    assert check_image(path) is None
    # the fully transparent 200 stays 200: alpha is dropped, not composited onto black or white
    assert_pixels(load_unit(path), grey([[10 / 255, 200 / 255], [90 / 255, 1]]))


def palette_image() -> Image.Image:
    image = Image.new("P", (2, 2))
    image.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0, 7, 8, 9])
    image.putdata([0, 1, 2, 3])
    return image


def test_mode_p(tmp_path):
    path = save(palette_image(), tmp_path / "palette.png", "P")
    assert check_image(path) is None
    assert_pixels(load_unit(path), rgb([[(10, 20, 30), (200, 100, 50)], [(0, 255, 0), (7, 8, 9)]]))


@pytest.mark.parametrize("transparency", [1, bytes([255, 0, 128, 255])], ids=["one-index", "per-entry-bytes"])
def test_mode_p_with_transparency_uses_palette_colours(tmp_path, transparency):
    image = palette_image()
    image.info["transparency"] = transparency
    path = save(image, tmp_path / "palette_trns.png", "P")
    with Image.open(path) as reopened:
        assert "transparency" in reopened.info
    assert check_image(path) is None
    # the transparent entry (index 1) keeps its colour; load_unit turns warnings into errors, so none was raised
    assert_pixels(load_unit(path), rgb([[(10, 20, 30), (200, 100, 50)], [(0, 255, 0), (7, 8, 9)]]))


def test_mode_rgb(tmp_path):
    pixels = [[(1, 2, 3), (250, 128, 0)], [(0, 0, 0), (255, 255, 255)]]
    path = save(Image.fromarray(np.array(pixels, dtype=np.uint8)), tmp_path / "colour.png", "RGB")
    assert check_image(path) is None
    assert_pixels(load_unit(path), rgb(pixels))


def test_mode_rgba_discards_alpha(tmp_path):
    pixels = [[(1, 2, 3, 0), (250, 128, 0, 255)], [(40, 50, 60, 128), (255, 255, 255, 0)]]
    path = save(Image.fromarray(np.array(pixels, dtype=np.uint8), mode="RGBA"), tmp_path / "colour_alpha.png", "RGBA")
    assert check_image(path) is None
    assert_pixels(load_unit(path), rgb([[p[:3] for p in row] for row in pixels]))


def test_mode_cmyk(tmp_path):
    pixels = [[(0, 0, 0, 0), (255, 0, 0, 0)], [(0, 0, 0, 255), (0, 255, 0, 0)]]  # white, cyan, black, magenta
    path = save(Image.fromarray(np.array(pixels, dtype=np.uint8), mode="CMYK"), tmp_path / "cmyk.tif", "CMYK")
    assert check_image(path) is None
    assert_pixels(load_unit(path), rgb([[(255, 255, 255), (0, 255, 255)], [(0, 0, 0), (255, 0, 255)]]))


def test_mode_ycbcr_converted_by_pil(tmp_path):
    pixels = [[(128, 128, 128), (255, 128, 128)], [(0, 128, 128), (76, 85, 255)]]  # grey, white, black, ~red
    path = save(Image.fromarray(np.array(pixels, dtype=np.uint8), mode="YCbCr"), tmp_path / "ycbcr.tif", "YCbCr")
    with Image.open(path) as reopened:
        expected = np.asarray(reopened.convert("RGB"))
    assert expected[0, 1].tolist() == [255, 255, 255] and expected[1, 1, 0] > 200 > expected[1, 1, 1]  # RGB, not raw YCbCr
    assert check_image(path) is None
    assert_pixels(load_unit(path), rgb(expected.tolist()))


# --- wide modes: scaled from their values ------------------------------------------------------------


def test_mode_i16_png_uses_the_full_16_bit_range(tmp_path):
    values = np.array([[0, 32768], [65535, 1000]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "grey16.png", "I;16")
    assert check_image(path) is None
    pixels = load_unit(path)
    assert_pixels(pixels, grey([[0, 32768 / 65535], [1, 1000 / 65535]]))
    assert pixels[0, 0, 1].item() == pytest.approx(0.50000763, abs=1e-8)
    # not clipped to white as convert("RGB") does: 1000 is ~0.015, not 1
    assert pixels[:, 1, 1].tolist() == pytest.approx([1000 / 65535] * 3, abs=1e-8)
    assert pixels.min().item() < 0.5


def test_mode_i16b_tiff_is_read_big_endian(tmp_path):
    # 1 and 256 swap if the bytes are read in the wrong order
    values = np.array([[1, 256], [32768, 65535]], dtype=">u2")
    image = Image.frombytes("I;16B", (2, 2), values.tobytes())
    path = save(image, tmp_path / "grey16b.tif", "I;16B")
    assert check_image(path) is None
    assert_pixels(load_unit(path), grey([[1 / 65535, 256 / 65535], [32768 / 65535, 1]]))


@pytest.mark.parametrize("mode", ["I;16", "I;16L", "I;16N", "I;16B"])
def test_every_16_bit_variant_in_memory(mode):
    dtype = ">u2" if mode == "I;16B" else "<u2"
    image = Image.frombytes(mode, (2, 1), np.array([1, 32768], dtype=dtype).tobytes())
    assert image_problem(image) is None
    assert_pixels(to_unit_rgb(image), grey([[1 / 65535, 32768 / 65535]]))


def test_mode_i_within_16_bit_range_is_scaled_as_16_bit(tmp_path):
    values = np.array([[0, 32768], [65535, 7]], dtype=np.int32)
    path = save(Image.fromarray(values), tmp_path / "int32.tif", "I")
    assert check_image(path) is None
    assert_pixels(load_unit(path), grey([[0, 32768 / 65535], [1, 7 / 65535]]))


def test_mode_i_outside_16_bit_range_is_quarantined(tmp_path):
    values = np.array([[-5, 70000], [3, 4]], dtype=np.int32)
    path = save(Image.fromarray(values), tmp_path / "int32_wide.tif", "I")
    reason = check_image(path)
    assert reason is not None
    assert reason.startswith("UnsupportedImageError: mode I ")
    assert "-5" in reason and "70000" in reason and "no known scale" in reason
    with pytest.raises(UnsupportedImageError, match=r"int32_wide\.tif: mode I .*from -5 to 70000"):
        load_unit(path)


def test_mode_f_within_unit_range_is_used_as_is(tmp_path):
    values = np.array([[0.0, 0.25], [0.123456, 1.0]], dtype=np.float32)
    path = save(Image.fromarray(values), tmp_path / "float.tif", "F")
    assert check_image(path) is None
    pixels = load_unit(path)
    assert torch.equal(pixels, grey(values.tolist()))


def test_mode_f_outside_unit_range_is_quarantined(tmp_path):
    values = np.array([[-0.5, 0.25], [2.0, 1.0]], dtype=np.float32)
    path = save(Image.fromarray(values), tmp_path / "float_wide.tif", "F")
    reason = check_image(path)
    assert reason is not None
    assert reason.startswith("UnsupportedImageError: mode F ")
    assert "-0.5" in reason and "to 2" in reason and "no known scale" in reason
    with pytest.raises(UnsupportedImageError, match=r"float_wide\.tif: mode F .*from -0\.5 to 2"):
        load_unit(path)


def test_mode_f_with_non_finite_values_is_quarantined(tmp_path):
    values = np.array([[0.0, np.nan], [np.inf, 1.0]], dtype=np.float32)
    path = save(Image.fromarray(values), tmp_path / "float_nan.tif", "F")
    reason = check_image(path)
    assert reason is not None
    assert reason.startswith("UnsupportedImageError: mode F ") and "2 non-finite" in reason
    with pytest.raises(UnsupportedImageError, match="non-finite"):
        load_unit(path)


def test_a_mode_pil_cannot_convert_is_unsupported():
    image = Image.new("La", (2, 2))
    assert image_problem(image).startswith("UnsupportedImageError: mode La: PIL cannot convert it to RGB")
    with pytest.raises(UnsupportedImageError, match="mode La"):
        to_unit_rgb(image)


# --- the index stage ----------------------------------------------------------------------------------


def test_build_index_quarantines_unscalable_images_and_keeps_16_bit_ones(tmp_path):
    save(Image.fromarray(np.full((4, 4), 40000, dtype=np.uint16)), tmp_path / "deep.png", "I;16")
    save(Image.fromarray(np.full((4, 4), 3.5, dtype=np.float32)), tmp_path / "radiance.tif", "F")
    save(Image.fromarray(np.full((4, 4), 9, dtype=np.uint8)), tmp_path / "plain.png", "L")
    pd.DataFrame({
        "image": ["deep.png", "radiance.tif", "plain.png"], "label": ["a", "b", "a"], "group": ["1", "2", "3"],
    }).to_csv(tmp_path / "metadata.csv", index=False)
    index, quarantine = build_index(tmp_path, "metadata_csv", max_quarantine_fraction=0.5)
    assert sorted(index["path"]) == ["deep.png", "plain.png"]
    assert quarantine["path"].tolist() == ["radiance.tif"]
    assert quarantine["reason"].iloc[0].startswith("UnsupportedImageError: mode F (32-bit float) holds values from 3.5 to 3.5")


def test_decode_errors_keep_their_reasons(tmp_path):
    assert check_image(tmp_path / "absent.png") == "file missing"
    (tmp_path / "not_an_image.png").write_bytes(b"plain text, not a PNG")
    assert check_image(tmp_path / "not_an_image.png").startswith("UnidentifiedImageError: ")
    noise = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)  # incompressible: the cut lands in the pixels
    good = save(Image.fromarray(noise), tmp_path / "whole.png", "L")
    (tmp_path / "truncated.png").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    assert check_image(tmp_path / "truncated.png").startswith(("OSError: ", "SyntaxError: "))
