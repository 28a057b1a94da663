"""Tests of training: determinism, resuming after an interruption, class weights, the pipeline stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from camfaith import pipeline, training
from camfaith.data.images import ImageTable, Preprocessing, select_split
from camfaith.models import ModelSpec, build_model, load_checkpoint
from camfaith.training import TrainConfig, class_weights, fingerprint, train

PREPROCESSING = {"image_size": 32, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
MODEL = {"arch": "resnet18", "head": "flatten", "cut_after": "layer1", "plain_last_block": True}
TRAINING = {"epochs": 3, "batch_size": 16, "lr": 1e-3, "patience": None, "seed": 0, "amp": False,
            "augment": {"hflip": 0.5, "vflip": 0.5}}
CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def restore_determinism_flags():
    """train() switches torch to deterministic algorithms globally; leave the process as found."""
    enabled, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    yield
    torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
    torch.backends.cudnn.benchmark = benchmark


def run_training(dataset, resume_path, training_config: dict | None = None, key: str = "run-a"):
    """Build the tiny model as pipeline.train_model does and train it; returns (best state, history)."""
    config = TrainConfig.from_config(training_config or TRAINING)
    spec = ModelSpec.from_config(MODEL, len(dataset.classes), PREPROCESSING["image_size"])
    torch.manual_seed(config.seed)
    model = build_model(spec)
    preprocessing = Preprocessing.from_config(PREPROCESSING)
    tables = {name: ImageTable(dataset.root, select_split(dataset.index, dataset.splits, name), preprocessing)
              for name in ("train", "val")}
    return train(model, tables["train"], tables["val"], config, resume_path, CPU, key, len(dataset.classes))


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [key for key in a if not torch.equal(a[key], b[key])]
    assert not different, f"tensors differ: {different[:5]}"


class InterruptOnCall:
    """Wraps training._evaluate_loss; raises KeyboardInterrupt on call number ``n`` (the end of epoch n)."""

    def __init__(self, original, n: int):
        self.original, self.n, self.calls = original, n, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt("simulated interruption")
        return self.original(*args, **kwargs)


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory):
    """Reference run: three epochs in one go."""
    best, history = run_training(tiny_dataset, tmp_path_factory.mktemp("uninterrupted") / "resume.pt")
    return best, history


def test_training_is_deterministic(tiny_dataset, uninterrupted, tmp_path):
    best, history = run_training(tiny_dataset, tmp_path / "resume.pt")
    reference_best, reference_history = uninterrupted
    assert_same_state(best, reference_best)
    columns = ["epoch", "train_loss", "val_loss", "val_balanced_accuracy", "lr", "improved"]
    pd.testing.assert_frame_equal(history[columns], reference_history[columns])


def test_training_changes_weights_and_records_history(tiny_dataset, uninterrupted):
    best, history = uninterrupted
    torch.manual_seed(0)
    initial = build_model(ModelSpec.from_config(MODEL, 3, 32)).state_dict()
    assert not torch.equal(best["fc.weight"], initial["fc.weight"])
    assert list(history.columns) == ["epoch", "train_loss", "val_loss", "val_balanced_accuracy", "lr", "seconds", "improved"]
    assert list(history["epoch"]) == [1, 2, 3]
    assert np.isfinite(history[["train_loss", "val_loss"]].to_numpy()).all()
    assert bool(history["improved"].iloc[0])


def test_interrupted_run_resumes_to_the_same_result(tiny_dataset, uninterrupted, tmp_path, monkeypatch):
    resume_path = tmp_path / "resume.pt"
    interrupt = InterruptOnCall(training._evaluate_loss, 2)
    monkeypatch.setattr(training, "_evaluate_loss", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_dataset, resume_path)
    monkeypatch.undo()
    assert interrupt.calls == 2

    assert resume_path.is_file()
    saved = torch.load(resume_path, map_location="cpu", weights_only=True)
    assert saved["format"] == training.RESUME_FORMAT and saved["epoch"] == 0
    assert [row["epoch"] for row in saved["history"]] == [1]

    best, history = run_training(tiny_dataset, resume_path)
    assert list(history["epoch"]) == [1, 2, 3]
    # epoch 1 comes from the checkpoint (its wall time cannot be reproduced by re-running it)
    assert history.iloc[0].to_dict() == saved["history"][0]
    reference_best, reference_history = uninterrupted
    assert_same_state(best, reference_best)
    columns = ["train_loss", "val_loss", "val_balanced_accuracy", "improved"]
    pd.testing.assert_frame_equal(history[columns], reference_history[columns])


def test_checkpoint_of_another_run_is_ignored(tiny_dataset, uninterrupted, tmp_path, monkeypatch):
    resume_path = tmp_path / "resume.pt"
    other = {**TRAINING, "lr": 1e-2}
    monkeypatch.setattr(training, "_evaluate_loss", InterruptOnCall(training._evaluate_loss, 2))
    with pytest.raises(KeyboardInterrupt):
        run_training(tiny_dataset, resume_path, other, key="run-b")
    monkeypatch.undo()
    saved = torch.load(resume_path, map_location="cpu", weights_only=True)
    assert saved["fingerprint"] == "run-b"

    best, history = run_training(tiny_dataset, resume_path, key="run-a")
    assert list(history["epoch"]) == [1, 2, 3]
    assert history.iloc[0]["seconds"] != saved["history"][0]["seconds"]
    assert history.iloc[0]["val_loss"] != saved["history"][0]["val_loss"]
    assert_same_state(best, uninterrupted[0])


def test_fingerprint_is_stable_and_sensitive():
    spec = ModelSpec.from_config(MODEL, 3, 32)
    config = TrainConfig.from_config(TRAINING)
    key = fingerprint(spec, config, PREPROCESSING, "abc")
    assert key == fingerprint(ModelSpec.from_config(MODEL, 3, 32), TrainConfig.from_config(TRAINING), dict(PREPROCESSING), "abc")
    assert key != fingerprint(spec, TrainConfig.from_config({**TRAINING, "lr": 1e-2}), PREPROCESSING, "abc")
    assert key != fingerprint(spec, config, PREPROCESSING, "abd")


def test_class_weights_are_inverse_frequency_with_mean_one():
    labels = np.array([0] * 6 + [1] * 3 + [2] * 1)
    weights = class_weights(labels, 3)
    assert weights.dtype == torch.float32 and weights.shape == (3,)
    assert weights.mean().item() == pytest.approx(1.0)
    ratio = (1 / np.array([6, 3, 1])) / (1 / np.array([6, 3, 1])).mean()
    np.testing.assert_allclose(weights.numpy(), ratio, rtol=1e-6)
    assert weights[2] / weights[0] == pytest.approx(6.0)
    np.testing.assert_allclose(class_weights(np.array([0, 1, 2, 0, 1, 2]), 3).numpy(), [1, 1, 1])


def test_class_weights_refuse_a_class_without_training_images():
    with pytest.raises(ValueError, match=r"\[2\]"):
        class_weights(np.array([0, 0, 1, 3]), 4)


def test_train_config_rejects_unknown_keys():
    with pytest.raises(ValueError, match="epoch_count"):
        TrainConfig.from_config({"epoch_count": 3})


# --- the pipeline stage --------------------------------------------------------------------------------


def stage_params(training_config: dict | None = None) -> dict:
    return {"model": dict(MODEL), "training": dict(training_config or TRAINING), "preprocessing": dict(PREPROCESSING),
            "device": "cpu"}


def run_stage(dataset, out, params):
    paths = {"model_path": out / "model.pt", "history_path": out / "history.parquet", "resume_path": out / "resume.pt"}
    pipeline.train_model(dataset.root, dataset.index_path, dataset.split_path, params, **paths)
    return paths


def test_pipeline_train_model_writes_checkpoint_and_history(tiny_dataset, uninterrupted, tmp_path):
    paths = run_stage(tiny_dataset, tmp_path, stage_params())
    model, spec, classes, preprocessing = load_checkpoint(paths["model_path"])
    assert classes == tiny_dataset.classes == ["disc", "square", "triangle"]
    assert preprocessing == PREPROCESSING
    assert spec == ModelSpec.from_config(MODEL, 3, 32)
    assert_same_state(model.state_dict(), uninterrupted[0])  # the stage trains exactly what train() trains
    history = pd.read_parquet(paths["history_path"])
    assert list(history["epoch"]) == [1, 2, 3]
    assert not paths["resume_path"].exists()  # the resume checkpoint is removed once the model is written


def test_pipeline_train_model_resumes_after_interruption(tiny_dataset, uninterrupted, tmp_path, monkeypatch):
    monkeypatch.setattr(training, "_evaluate_loss", InterruptOnCall(training._evaluate_loss, 3))
    with pytest.raises(KeyboardInterrupt):
        run_stage(tiny_dataset, tmp_path, stage_params())
    monkeypatch.undo()
    assert (tmp_path / "resume.pt").is_file() and not (tmp_path / "model.pt").exists()
    saved = torch.load(tmp_path / "resume.pt", map_location="cpu", weights_only=True)
    assert saved["epoch"] == 1

    paths = run_stage(tiny_dataset, tmp_path, stage_params())
    history = pd.read_parquet(paths["history_path"])
    assert history.iloc[1].to_dict() == saved["history"][1]
    model, *_ = load_checkpoint(paths["model_path"])
    assert_same_state(model.state_dict(), uninterrupted[0])


class _TouchOnUnpickle:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("content", ["code", "truncated"])
def test_an_unsafe_or_truncated_resume_checkpoint_is_ignored_without_running_it(tiny_dataset, uninterrupted, tmp_path, caplog, content):
    resume_path = tmp_path / "resume.pt"
    marker = tmp_path / "code-ran"
    if content == "code":
        torch.save({"format": training.RESUME_FORMAT, "fingerprint": "run-a", "payload": _TouchOnUnpickle(marker)}, resume_path)
    else:
        torch.save({"format": training.RESUME_FORMAT, "fingerprint": "run-a", "model": torch.zeros(1000)}, resume_path)
        resume_path.write_bytes(resume_path.read_bytes()[:300])
    with caplog.at_level("WARNING", logger="camfaith.training"):
        best, history = run_training(tiny_dataset, resume_path)
    assert not marker.exists()
    assert "starting over" in caplog.text and "resume.pt" in caplog.text
    assert list(history["epoch"]) == [1, 2, 3]
    assert_same_state(best, uninterrupted[0])
