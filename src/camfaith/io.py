"""File helpers shared by every stage: atomic writes, hashing, provenance and seeding."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

PROVENANCE_PACKAGES = ("camfaith", "torch", "torchvision", "numpy", "h5py", "pyarrow", "scikit-learn")


def _umask() -> int:
    """The process's umask (reading it means setting it: put it straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds.

    A crash or exception inside the block removes the temporary file, so a reader never finds a
    half-written output where a later run would trust it. Temporary files a killed writer of the
    same output left behind (``.<name>.<random>.part``) are removed first. The result gets the
    permissions of a file created with ``open()`` (0666 less the umask), not ``mkstemp``'s 0600, so
    results can be shared the way the user's umask says.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for leftover in final.parent.glob(f".{glob.escape(final.name)}.*.part"):
        leftover.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():  # the block may have replaced it (h5py, pyarrow): set the mode on what is there
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


class UnreadableInputError(ValueError):
    """An input file of a stage is truncated or corrupt; the message names it and its rule."""


# results/<stage>/… → the rule that writes it (rules/*.smk); rules/ mirror these paths.
PRODUCERS = {"download": "download", "index": "index", "split": "split", "train": "train", "evaluate": "evaluate",
             "explain": "explain", "score": "score", "aggregate": "tables, figures or overlays"}


def unreadable(path: str | os.PathLike[str], error: BaseException) -> UnreadableInputError:
    """The error for an input that cannot be read: the file, what the reader said, and how to make it
    again (the rule that writes it, from its ``results/<stage>/`` path)."""
    parts = Path(path).parts
    stage = next((parts[i + 1] for i, part in enumerate(parts[:-1]) if part == "results" and parts[i + 1] in PRODUCERS), None)
    remedy = f"it is written by rule {PRODUCERS[stage]}: delete it and run the same snakemake command again" if stage else "replace it with a complete copy"
    return UnreadableInputError(f"{path} is truncated or corrupt ({type(error).__name__}: {error}); {remedy}")


def sha256_file(path: str | os.PathLike[str], chunk_bytes: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks of ``chunk_bytes``."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk_bytes):
            digest.update(block)
    return digest.hexdigest()


def package_versions(names: tuple[str, ...] = PROVENANCE_PACKAGES) -> dict[str, str]:
    """Installed version of each named distribution ("absent" when not installed)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
    return versions


def runtime_versions(root: str = "camfaith") -> dict[str, str]:
    """``name → version`` of ``root`` and every distribution it needs at run time, recursively
    (requirement markers evaluated for this interpreter; extras such as ``test`` and ``bench`` left out,
    so installing pytest or the benchmark's alternatives changes nothing). Snakemake and its plugins
    are left out too: the workflow engine schedules the computations but takes no part in them."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    versions: dict[str, str] = {}
    pending = [root]
    while pending:
        name = canonicalize_name(pending.pop())
        if name in versions or name.startswith("snakemake"):
            continue
        try:
            distribution = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            versions[name] = "absent"
            continue
        versions[name] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return dict(sorted(versions.items()))


def software_fingerprint(root: str = "camfaith") -> str:
    """16 hex digits identifying :func:`runtime_versions`. The heavy rules take it as a param, so a
    dependency upgrade re-runs them — also inside a container, where Snakemake sees no files change."""
    return hashlib.sha256(canonical_json(runtime_versions(root)).encode()).hexdigest()[:16]


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from ``parts`` (e.g. seed, image id, step) by BLAKE2b.

    Python's ``hash`` is salted per process, so it cannot make draws reproducible across jobs.
    """
    text = json.dumps([str(part) for part in parts])
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little") >> 1


def canonical_json(value: object) -> str:
    """JSON with sorted keys: a stable text form of a config subtree, for hashes and metadata."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
