"""Unpack downloaded archives safely and only once.

Every member is checked before anything is written: an absolute path, a ``..`` component, or a link
that points outside the target is refused with the archive and member named, and nothing is
extracted. Tar archives use the standard library's ``data`` filter (PEP 706) for those checks and
for dropping device files and unsafe modes; zip members are checked here because ``zipfile``
silently rewrites bad names instead of refusing them. A marker file records which archive (by
SHA-256) was unpacked where, so a second call does nothing.
"""

from __future__ import annotations

import json
import logging
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

MARKER_PREFIX = ".camfaith-extracted-"


class UnsafeArchiveError(ValueError):
    """An archive member would land outside the target folder."""


def _check_name(archive: Path, name: str) -> None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; nothing was extracted")
    if ".." in path.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} contains '..'; nothing was extracted")


def _check_zip(archive: Path, members: list[zipfile.ZipInfo], target: Path) -> None:
    for member in members:
        _check_name(archive, member.filename)
        if stat.S_ISLNK(member.external_attr >> 16):
            raise UnsafeArchiveError(f"{archive}: member {member.filename!r} is a symbolic link; nothing was extracted")


def _check_tar(archive: Path, members: list[tarfile.TarInfo], target: Path) -> None:
    for member in members:
        _check_name(archive, member.name)
        try:
            tarfile.data_filter(member, str(target))
        except tarfile.FilterError as error:
            raise UnsafeArchiveError(f"{archive}: member {member.name!r} refused ({type(error).__name__}: {error}); nothing was extracted") from error


def marker_path(target: Path, archive: Path) -> Path:
    return Path(target) / f"{MARKER_PREFIX}{Path(archive).name}.json"


def extract(archive: str | Path, target: str | Path, sha256: str) -> bool:
    """Unpack ``archive`` (zip, tar, tar.gz/bz2/xz) into ``target``; returns False when the marker
    shows this very archive (``sha256``) was already unpacked there, True after unpacking."""
    archive, target = Path(archive), Path(target)
    marker = marker_path(target, archive)
    if marker.is_file() and json.loads(marker.read_text()).get("sha256") == sha256:
        log.info("%s already extracted into %s", archive.name, target)
        return False
    target.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as bundle:
            members = bundle.infolist()
            _check_zip(archive, members, target)
            bundle.extractall(target)
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as bundle:
            members = bundle.getmembers()
            _check_tar(archive, members, target)
            bundle.extractall(target, filter="data")
    else:
        raise ValueError(f"{archive}: neither a zip nor a tar archive")
    marker.write_text(json.dumps({"archive": archive.name, "sha256": sha256, "members": len(members)}))
    log.info("extracted %d members of %s into %s", len(members), archive.name, target)
    return True
