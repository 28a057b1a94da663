"""File helpers shared by every stage: atomic writes, hashing, provenance and seeding."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

PROVENANCE_PACKAGES = ("camfaith", "torch", "torchvision", "numpy", "h5py", "pyarrow", "scikit-learn")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place only if the block succeeds.

    A crash or exception inside the block removes the temporary file, so a reader never finds a
    half-written output where a later run would trust it.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".part", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


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
