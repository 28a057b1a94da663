"""Image loading: PIL decode, resize and normalise, as a torch Dataset over index rows."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from camfaith.data.pixels import WIDE_MODES, UnsupportedImageError, rgb_8bit, unit_grey


@dataclass(frozen=True)
class Preprocessing:
    """How images become model inputs: square resize (aspect not kept, as in the study), then normalise."""

    image_size: int
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    @classmethod
    def from_config(cls, config: dict) -> Preprocessing:
        return cls(int(config["image_size"]), tuple(config["mean"]), tuple(config["std"]))

    def to_unit(self, images: torch.Tensor) -> torch.Tensor:
        """Undo the normalisation: ``[N, 3, H, W]`` model inputs → pixel values in [0, 1]."""
        mean = images.new_tensor(self.mean).view(1, -1, 1, 1)
        std = images.new_tensor(self.std).view(1, -1, 1, 1)
        return images * std + mean

    def from_unit(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalise ``[N, 3, H, W]`` pixel values in [0, 1] into model inputs."""
        mean = pixels.new_tensor(self.mean).view(1, -1, 1, 1)
        std = pixels.new_tensor(self.std).view(1, -1, 1, 1)
        return (pixels - mean) / std


def augmentation(config: dict | None) -> v2.Transform | None:
    """Training augmentation from config keys ``hflip``, ``vflip`` (probabilities) and ``rotation`` (degrees)."""
    if not config:
        return None
    steps: list[v2.Transform] = []
    if config.get("hflip", 0) > 0:
        steps.append(v2.RandomHorizontalFlip(config["hflip"]))
    if config.get("vflip", 0) > 0:
        steps.append(v2.RandomVerticalFlip(config["vflip"]))
    if config.get("rotation", 0) > 0:
        steps.append(v2.RandomRotation(config["rotation"]))
    return v2.Compose(steps) if steps else None


def to_unit_rgb(image: Image.Image) -> torch.Tensor:
    """A decoded PIL image as ``[3, H, W]`` float32 pixel values in [0, 1], for every mode PIL reads.

    - 8-bit modes (``1``, ``L``, ``LA``, ``P`` with or without transparency, ``RGB``, ``RGBA``, ``CMYK``, ``YCbCr``, …):
      PIL's ``convert("RGB")`` divided by 255; alpha is discarded, not composited (:func:`~camfaith.data.pixels.rgb_8bit`).
    - ``I;16``, ``I;16B``, ``I;16L``, ``I;16N`` (unsigned 16-bit grey): divided by 65535, replicated to 3 channels.
    - ``I`` (32-bit signed grey): divided by 65535 when every value lies in 0..65535, replicated to 3 channels.
    - ``F`` (32-bit float grey): kept as it is when every value lies in [0, 1], replicated to 3 channels.

    Anything else (``I`` or ``F`` outside those ranges, non-finite ``F``, a mode PIL cannot convert to RGB) raises
    :class:`~camfaith.data.pixels.UnsupportedImageError`; the index stage quarantines such images with the same message.
    """
    if image.mode in WIDE_MODES:
        # convert("RGB") would clip these to 255 (a 16-bit image loads as white), so they are scaled from their values
        grey = torch.from_numpy(unit_grey(image))
        return tv_tensors.Image(grey.expand(3, -1, -1).contiguous())
    return v2.functional.to_dtype(v2.functional.to_image(rgb_8bit(image)), torch.float32, scale=True)


class ImageTable(Dataset):
    """Items ``(image [3, S, S] float32 normalised, label int, position int)`` for rows of an index;
    :meth:`load_ground_truth` gives an image's mask and box at the same input resolution."""

    def __init__(self, root: str | Path, rows: pd.DataFrame, preprocessing: Preprocessing, augment: v2.Transform | None = None):
        self.root = Path(root)
        self.rows = rows.reset_index(drop=True)
        self.paths = rows["path"].astype(str).tolist()
        self.image_ids = rows["image_id"].astype(str).tolist()
        self.labels = rows["label_index"].astype(int).tolist()
        self.preprocessing = preprocessing
        self.augment = augment
        self.normalize = v2.Normalize(list(preprocessing.mean), list(preprocessing.std))

    def __len__(self) -> int:
        return len(self.paths)

    def load_unit(self, position: int) -> torch.Tensor:
        """Image ``[3, S, S]`` in [0, 1] before augmentation and normalisation (pixel rules: :func:`to_unit_rgb`)."""
        path = self.root / self.paths[position]
        try:
            with Image.open(path) as image:
                tensor = to_unit_rgb(image)
        except UnsupportedImageError as error:
            raise UnsupportedImageError(f"cannot use image {path}: {error}") from error
        except OSError as error:
            raise OSError(f"cannot read image {path}: {error}") from error
        size = [self.preprocessing.image_size] * 2
        return v2.functional.resize(tensor, size, antialias=True).clamp_(0, 1)

    def has_ground_truth(self, position: int) -> bool:
        """Whether the image's row has a mask path or a whole box (``bbox_x0..bbox_y1``)."""
        from camfaith.data.index import has_ground_truth

        return has_ground_truth(self.rows.iloc[position])

    def load_ground_truth(self, position: int, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The image's ground truth at input resolution, resized as :meth:`load_unit` resizes the image
        (square, aspect not kept): ``(mask [S, S] bool, box [4] float32)``.

        ``kind`` ``mask``: the mask file (any size; antialiased bilinear resize, then > 0.5), its box the
        index's ``bbox_*`` columns (original pixels, x1/y1 exclusive) scaled by S / width and S / height,
        or where they are empty the bounds of the resized mask. ``box``: the box, and as mask the pixels
        whose centre lies inside it. A row without the ground truth its dataset declares is a ValueError
        naming the image (the index stage quarantines such rows, so this means a stale index).
        """
        from camfaith.metrics.localisation import box_region

        row, size = self.rows.iloc[position], self.preprocessing.image_size
        path = self.root / self.paths[position]
        box = None
        if all(pd.notna(row.get(f"bbox_{c}")) for c in ("x0", "y0", "x1", "y1")):
            with Image.open(path) as image:
                width, height = image.size
            scale = torch.tensor([size / width, size / height, size / width, size / height], dtype=torch.float32)
            box = torch.tensor([float(row[f"bbox_{c}"]) for c in ("x0", "y0", "x1", "y1")], dtype=torch.float32) * scale
        if kind == "mask":
            if pd.isna(row.get("mask_path")):
                raise ValueError(f"image {path} has no mask, though its dataset declares ground_truth: mask; re-run the index stage")
            mask_path = self.root / str(row["mask_path"])
            try:
                with Image.open(mask_path) as image:
                    plane = v2.functional.to_dtype(v2.functional.to_image(image.convert("L")), torch.float32, scale=True)
            except OSError as error:
                raise OSError(f"cannot read mask {mask_path} of image {path}: {error}") from error
            mask = v2.functional.resize(plane, [size, size], antialias=True)[0] > 0.5
            if box is None:
                rows_, cols = torch.nonzero(mask, as_tuple=True)
                box = (torch.tensor([cols.min(), rows_.min(), cols.max() + 1, rows_.max() + 1], dtype=torch.float32) if len(rows_)
                       else torch.full((4,), float("nan")))
            return mask, box
        if kind != "box":
            raise ValueError(f"ground truth kind must be mask or box, got {kind!r}")
        if box is None:
            raise ValueError(f"image {path} has no box (bbox_x0..bbox_y1), though its dataset declares ground_truth: box; re-run the index stage")
        return box_region(box.view(1, 4), (size, size))[0], box

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int, int]:
        image = self.load_unit(position)
        if self.augment is not None:
            image = self.augment(image)
        return self.normalize(image), self.labels[position], position


def select_split(index: pd.DataFrame, splits: pd.DataFrame, name: str) -> pd.DataFrame:
    """Index rows of split ``name``, in ``image_id`` order."""
    ids = splits.loc[splits["split"] == name, "image_id"]
    rows = index[index["image_id"].isin(ids)].sort_values("image_id", kind="stable").reset_index(drop=True)
    if rows.empty:
        raise ValueError(f"split {name!r} is empty")
    return rows


def make_loader(table: ImageTable, batch_size: int, shuffle: bool, workers: int, seed: int, pin_memory: bool) -> DataLoader:
    """A DataLoader whose shuffling is driven by its own seeded generator (reproducible epochs)."""
    generator = torch.Generator().manual_seed(seed)
    return DataLoader(
        table, batch_size=batch_size, shuffle=shuffle, num_workers=workers, generator=generator,
        pin_memory=pin_memory, persistent_workers=workers > 0,
    )
