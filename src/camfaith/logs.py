"""Logging for rule scripts: everything (log records, warnings, tracebacks) goes to the rule's log file."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def to_file(path: str | Path) -> None:
    """Send logging and stderr to ``path`` (Snakemake's ``log:``), so a failing job's reason is there."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    stream = open(path, "a", buffering=1)  # noqa: SIM115 (it stays open: the job's stderr and logging write to it until exit)
    sys.stderr = stream
    logging.basicConfig(level=logging.INFO, stream=stream, force=True,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.captureWarnings(True)


def setup(log_path: str | Path, threads: int | None = None) -> None:
    """Start of every rule script: log to the rule's file and use the threads Snakemake granted."""
    to_file(log_path)
    if threads:
        import torch

        torch.set_num_threads(int(threads))
