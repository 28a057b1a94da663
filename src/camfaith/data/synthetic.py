"""The embedded synthetic dataset: localised class objects with ground truth, grouped by patient.

Each class is defined by one object whose *shape and texture* both carry the class; its position is
random. Every image also holds a class-uninformative distractor (a dotted ring) and lies on a
background that belongs to its patient (group): a per-patient colour, gradient and noise. Every
patient has one label, as in pathology or dermatology datasets, so a random split would let a model
recognise test patients by their background, and only a grouped split measures what it learned.

The files are written in the same on-disk shape as a real dataset (class folders of PNG images,
class folders of PNG masks, a metadata CSV), so the index and split stages run unchanged on it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from camfaith.io import derive_seed

# shape, texture: the pair that defines each class the generator knows.
CLASS_OBJECTS: dict[str, tuple[str, str]] = {
    "disc": ("disc", "horizontal_stripes"),
    "square": ("square", "vertical_stripes"),
    "triangle": ("triangle", "checker"),
    "diamond": ("diamond", "diagonal_stripes"),
}
METADATA_COLUMNS = ("image", "label", "group", "mask", "bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of the generator (the ``synthetic:`` block of a dataset in the config)."""

    seed: int = 0
    image_size: int = 64
    classes: tuple[str, ...] = ("disc", "square", "triangle")
    groups_per_class: int = 20
    images_per_group: int = 8
    object_size: tuple[int, int] = (18, 26)
    distractor: bool = True
    corrupt_images: int = 0

    @classmethod
    def from_config(cls, config: dict) -> SyntheticSpec:
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown synthetic dataset key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        values = dict(config)
        for key in ("classes", "object_size"):
            if key in values:
                values[key] = tuple(values[key])
        spec = cls(**values)
        bad = [name for name in spec.classes if name not in CLASS_OBJECTS]
        if bad or len(spec.classes) < 2:
            raise ValueError(f"synthetic classes must be >=2 of {sorted(CLASS_OBJECTS)}, got {list(spec.classes)}")
        low, high = spec.object_size
        if not 4 <= low <= high <= spec.image_size // 2:
            raise ValueError(f"object_size {spec.object_size} must satisfy 4 <= min <= max <= image_size/2")
        return spec


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Boolean ``[size, size]`` mask of a centred shape filling its box."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    centre = (size - 1) / 2
    u, v = (xx - centre) / (size / 2), (yy - centre) / (size / 2)
    if shape == "disc":
        return u**2 + v**2 <= 1.0
    if shape == "square":
        return (np.abs(u) <= 0.85) & (np.abs(v) <= 0.85)
    if shape == "triangle":
        return (v <= 0.9) & (v >= -0.9) & (np.abs(u) <= (v + 0.9) / 1.8)
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.0
    if shape == "ring":
        radius = u**2 + v**2
        return (radius <= 1.0) & (radius >= 0.45)
    raise ValueError(f"unknown shape {shape!r}")


def texture(name: str, size: int, period: int = 4) -> np.ndarray:
    """``[size, size]`` texture in {0.35, 1.0}: the modulation applied to an object's colour."""
    yy, xx = np.mgrid[0:size, 0:size]
    half = period // 2
    if name == "horizontal_stripes":
        on = (yy // half) % 2 == 0
    elif name == "vertical_stripes":
        on = (xx // half) % 2 == 0
    elif name == "checker":
        on = ((yy // half) + (xx // half)) % 2 == 0
    elif name == "diagonal_stripes":
        on = ((xx + yy) // half) % 2 == 0
    elif name == "dots":
        on = (yy % period < half) & (xx % period < half)
    else:
        raise ValueError(f"unknown texture {name!r}")
    return np.where(on, 1.0, 0.35)


def patient_background(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A patient's background parameters: base colour ``[3]`` and gradient ``[3, size, size]``."""
    base = rng.uniform(0.15, 0.55, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    ramp = np.cos(angle) * xx + np.sin(angle) * yy
    gradient = rng.uniform(-0.2, 0.2, size=(3, 1, 1)) * ramp[None]
    return base, gradient


def _positions(rng: np.random.Generator, size: int, box: int, other: int | None) -> tuple[tuple[int, int], tuple[int, int] | None]:
    """Top-left corners of a ``box``-px object and, if ``other`` is given, a non-overlapping ``other``-px one."""
    for _ in range(1000):
        x0, y0 = (int(v) for v in rng.integers(0, size - box + 1, size=2))
        if other is None:
            return (x0, y0), None
        dx, dy = (int(v) for v in rng.integers(0, size - other + 1, size=2))
        if dx >= x0 + box or dx + other <= x0 or dy >= y0 + box or dy + other <= y0:
            return (x0, y0), (dx, dy)
    raise RuntimeError(f"cannot place {box}px and {other}px objects apart in a {size}px image; lower object_size")


def render_image(spec: SyntheticSpec, label: str, background: tuple[np.ndarray, np.ndarray],
                 seed: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int, int]]:
    """One image.

    Returns the RGB image ``[size, size, 3]`` uint8, the class-object mask ``[size, size]`` bool and its
    bounding box ``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive.
    """
    rng = np.random.default_rng(seed)
    size = spec.image_size
    base, gradient = background
    image = base[:, None, None] + gradient + rng.normal(0, 0.03, size=(3, size, size))

    shape, texture_name = CLASS_OBJECTS[label]
    box = int(rng.integers(spec.object_size[0], spec.object_size[1] + 1))
    d_box = int(rng.integers(spec.object_size[0], spec.object_size[1] + 1)) if spec.distractor else None
    (x0, y0), distractor_at = _positions(rng, size, box, d_box)
    local = shape_mask(shape, box)
    colour = rng.uniform(0.65, 1.0, size=3)
    patch = colour[:, None, None] * texture(texture_name, box)[None]
    region = image[:, y0 : y0 + box, x0 : x0 + box]
    image[:, y0 : y0 + box, x0 : x0 + box] = np.where(local[None], patch, region)
    mask = np.zeros((size, size), dtype=bool)
    mask[y0 : y0 + box, x0 : x0 + box] = local
    rows, cols = np.nonzero(mask)
    bbox = (int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1)

    if distractor_at is not None:
        dx, dy = distractor_at
        ring = shape_mask("ring", d_box)
        d_colour = rng.uniform(0.65, 1.0, size=3)
        d_patch = d_colour[:, None, None] * texture("dots", d_box)[None]
        d_region = image[:, dy : dy + d_box, dx : dx + d_box]
        image[:, dy : dy + d_box, dx : dx + d_box] = np.where(ring[None], d_patch, d_region)

    pixels = np.clip(image.transpose(1, 2, 0) * 255 + 0.5, 0, 255).astype(np.uint8)
    return pixels, mask, bbox


def generate(spec: SyntheticSpec, root: str | Path) -> Path:
    """Write the dataset under ``root`` and return the path of its ``metadata.csv``.

    Layout: ``images/<class>/<group>_<k>.png``, ``masks/<class>/<group>_<k>.png`` (0/255 L-mode) and
    ``metadata.csv`` with paths relative to ``root``. Every draw is seeded by (seed, group, image), so
    the same spec gives the same bytes. ``corrupt_images`` files are truncated on purpose, to exercise
    the index stage's quarantine.
    """
    root = Path(root)
    rows = []
    for class_index, label in enumerate(spec.classes):
        for g in range(spec.groups_per_class):
            group = f"p{class_index:02d}{g:03d}"
            background = patient_background(np.random.default_rng(derive_seed(spec.seed, group, "background")), spec.image_size)
            for k in range(spec.images_per_group):
                pixels, mask, bbox = render_image(spec, label, background, derive_seed(spec.seed, group, k))
                image_rel = Path("images", label, f"{group}_{k:02d}.png")
                mask_rel = Path("masks", label, f"{group}_{k:02d}.png")
                for rel, array in ((image_rel, pixels), (mask_rel, mask.astype(np.uint8) * 255)):
                    (root / rel).parent.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(array).save(root / rel, optimize=False)
                rows.append((image_rel.as_posix(), label, group, mask_rel.as_posix(), *bbox))

    order = np.random.default_rng(derive_seed(spec.seed, "corrupt")).permutation(len(rows))
    for row_index in order[: spec.corrupt_images]:
        path = root / rows[row_index][0]
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 3])

    metadata_path = root / "metadata.csv"
    with open(metadata_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(METADATA_COLUMNS)
        writer.writerows(rows)
    return metadata_path
