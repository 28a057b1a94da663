"""Training: seeded, class-weighted, early-stopped, checkpointed every epoch and resumable."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import balanced_accuracy_score
from torch import nn
from torch.utils.data import DataLoader

from camfaith.data.images import ImageTable, augmentation, make_loader
from camfaith.io import atomic_path, canonical_json, derive_seed
from camfaith.models import safe_load

log = logging.getLogger(__name__)
RESUME_FORMAT = "camfaith.resume/1"


@dataclass(frozen=True)
class TrainConfig:
    """The ``training:`` block of a model. ``patience`` None trains all epochs (the last one is kept
    only if no validation loss improved); ``scheduler`` is None or ``{step_size, gamma}`` (StepLR)."""

    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int | None = 5
    seed: int = 0
    class_weighted: bool = True
    amp: bool = True
    workers: int = 0
    scheduler: dict | None = None
    augment: dict = field(default_factory=dict)

    @classmethod
    def from_config(cls, config: dict) -> TrainConfig:
        unknown = sorted(set(config) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown training key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**config)


def class_weights(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse class frequencies ``[K]`` scaled to mean 1; a class absent from training is an error."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    if (counts == 0).any():
        raise ValueError(f"class(es) {np.flatnonzero(counts == 0).tolist()} have no training image")
    weights = 1.0 / counts
    return torch.tensor(weights / weights.mean(), dtype=torch.float32)


def set_determinism(seed: int) -> None:
    """Seed torch and make CPU kernels deterministic (CUDA: as far as cuDNN allows, with a warning)."""
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device, amp: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(logits [N, K] float32, labels [N], positions [N])`` over ``loader`` in eval mode."""
    model.eval()
    logits, labels, positions = [], [], []
    for images, batch_labels, batch_positions in loader:
        images = images.to(device, non_blocking=True)
        with _autocast(device, amp):
            out = model(images)
        logits.append(out.float().cpu())
        labels.append(batch_labels)
        positions.append(batch_positions)
    return torch.cat(logits).numpy(), torch.cat(labels).numpy(), torch.cat(positions).numpy()


def _evaluate_loss(model: nn.Module, loader: DataLoader, criterion: nn.Module, device: torch.device, amp: bool) -> tuple[float, float]:
    logits, labels, _ = predict(model, loader, device, amp)
    loss = float(criterion(torch.from_numpy(logits), torch.from_numpy(labels).long()).item())
    return loss, float(balanced_accuracy_score(labels, logits.argmax(1)))


def train(
    model: nn.Module, train_table: ImageTable, val_table: ImageTable, config: TrainConfig,
    resume_path: str | Path, device: torch.device, fingerprint: str, num_classes: int,
) -> tuple[dict[str, torch.Tensor], pd.DataFrame]:
    """Train ``model`` and return ``(best state_dict, history)``.

    Every epoch ends with a checkpoint at ``resume_path`` (model, optimizer, scheduler, RNG seed of
    the next epoch, best state so far, history); a later call with the same ``fingerprint`` (a hash
    of everything that defines the run) continues from it, and gives the same result as an
    uninterrupted run because each epoch's shuffling and augmentation are seeded by (seed, epoch).
    History columns: ``epoch, train_loss, val_loss, val_balanced_accuracy, lr, seconds, improved``.
    """
    resume_path = Path(resume_path)
    set_determinism(config.seed)
    model.to(device)
    weights = class_weights(np.asarray(train_table.labels), num_classes) if config.class_weighted else None
    criterion = nn.CrossEntropyLoss(weight=weights.to(device) if weights is not None else None)
    cpu_criterion = nn.CrossEntropyLoss(weight=weights)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, **config.scheduler) if config.scheduler else None
    scaler = torch.amp.GradScaler(device.type, enabled=config.amp and device.type == "cuda")
    train_table.augment = augmentation(config.augment)
    pin = device.type == "cuda"
    val_loader = make_loader(val_table, config.batch_size, False, config.workers, config.seed, pin)

    start_epoch, best_loss, best_state, bad_epochs, history = 0, float("inf"), None, 0, []
    state = _read_resume(resume_path)
    if state is not None:
        if state.get("format") == RESUME_FORMAT and state.get("fingerprint") == fingerprint:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if scheduler is not None and state["scheduler"] is not None:
                scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            start_epoch, best_loss, bad_epochs = state["epoch"] + 1, state["best_loss"], state["bad_epochs"]
            best_state, history = state["best_state"], state["history"]
            log.info("resuming from %s after epoch %d (best val loss %.4f)", resume_path, state["epoch"] + 1, best_loss)
        else:
            log.warning("ignoring %s: it belongs to a different run (config, data or code changed)", resume_path)

    for epoch in range(start_epoch, config.epochs):
        if config.patience is not None and bad_epochs >= config.patience:
            break
        started = time.perf_counter()
        torch.manual_seed(derive_seed(config.seed, "epoch", epoch))
        loader = make_loader(train_table, config.batch_size, True, config.workers, derive_seed(config.seed, "shuffle", epoch), pin)
        model.train()
        total, seen = 0.0, 0
        for images, labels, _ in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with _autocast(device, config.amp):
                loss = criterion(model(images), labels)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total += float(loss.detach()) * len(labels)
            seen += len(labels)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None:
            scheduler.step()
        val_loss, val_bacc = _evaluate_loss(model, val_loader, cpu_criterion, device, config.amp)
        improved = val_loss < best_loss
        if improved:
            best_loss, best_state, bad_epochs = val_loss, copy.deepcopy({k: v.cpu() for k, v in model.state_dict().items()}), 0
        else:
            bad_epochs += 1
        seconds = time.perf_counter() - started
        history.append({"epoch": epoch + 1, "train_loss": total / max(seen, 1), "val_loss": val_loss,
                        "val_balanced_accuracy": val_bacc, "lr": lr, "seconds": seconds, "improved": improved})
        log.info("epoch %d/%d train_loss %.4f val_loss %.4f val_bacc %.3f lr %.2e %.1fs%s", epoch + 1, config.epochs,
                 history[-1]["train_loss"], val_loss, val_bacc, lr, seconds, " *" if improved else "")
        with atomic_path(resume_path) as tmp:
            torch.save({
                "format": RESUME_FORMAT, "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict() if scheduler else None,
                "scaler": scaler.state_dict(), "best_loss": best_loss, "best_state": best_state,
                "bad_epochs": bad_epochs, "history": history,
            }, tmp)
    if best_state is None:
        best_state = {k: v.cpu() for k, v in model.state_dict().items()}
    return best_state, pd.DataFrame(history)


def _read_resume(resume_path: Path) -> dict | None:
    """The epoch checkpoint at ``resume_path``, or None when there is none or it cannot be used.

    It is loaded with ``weights_only`` (:func:`camfaith.models.safe_load`), so a file that would run
    code is refused without running it; like an unreadable (truncated) file, it is then ignored with a
    warning and training starts over, overwriting it.
    """
    if not resume_path.is_file():
        return None
    try:
        state = safe_load(resume_path)
    except (ValueError, RuntimeError, EOFError, OSError) as error:
        log.warning("ignoring %s and starting over: it cannot be loaded (%s)", resume_path, error)
        return None
    if not isinstance(state, dict):
        log.warning("ignoring %s and starting over: not a camfaith resume checkpoint", resume_path)
        return None
    return state


def fingerprint(*parts: object) -> str:
    """A stable text key of what defines a training run (config, spec, data file hashes)."""
    import hashlib

    text = canonical_json([asdict(p) if hasattr(p, "__dataclass_fields__") else p for p in parts])
    return hashlib.sha256(text.encode()).hexdigest()
