"""Fetch a dataset's archives: pooch for placement, hash checks and retries; resumable HTTP under it.

pooch downloads into a temporary file, checks the hash and only then moves the file to its name,
so a file under its final name has always passed its check (or had no known hash). Its own HTTP
downloader starts over after every failure; :class:`ResumableDownloader` (the one piece written
here, for that reason) keeps the bytes received in ``<name>.part`` and asks for the rest with an
HTTP ``Range`` request, guarded by ``If-Range`` so a file that changed on the server is fetched whole.

Kaggle-hosted archives need the user's API token (``~/.kaggle/kaggle.json`` or the
``KAGGLE_USERNAME``/``KAGGLE_KEY`` variables, as the Kaggle CLI reads them) or a manual download in
``local_path``; with neither, the error says what to download and where to put it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from camfaith.data.registry import KAGGLE_API, RemoteFile

log = logging.getLogger(__name__)

CHUNK = 1 << 16  # bytes per read; a cut-off transfer loses at most this much
PROGRESS_EVERY_S = 10.0


class MissingCredentialsError(RuntimeError):
    """A Kaggle-hosted file, no token and no manual download."""


class MissingManualDownloadError(RuntimeError):
    """A file only a registered user can download (ImageNet), not in local_path, the cache or a mirror."""


class ChecksumError(ValueError):
    """A file's hash differs from the expected one."""


class IncompleteDownload(OSError):
    """The connection ended before the announced length arrived."""


@dataclass(frozen=True)
class Credentials:
    username: str
    key: str


def kaggle_credentials(environ: dict[str, str] | None = None, home: Path | None = None) -> Credentials | None:
    """The Kaggle API token from ``KAGGLE_USERNAME``/``KAGGLE_KEY``, else ``$KAGGLE_CONFIG_DIR`` or
    ``~/.kaggle``/``kaggle.json``; None when there is none. A malformed file is an error."""
    environ = os.environ if environ is None else environ
    if environ.get("KAGGLE_USERNAME") and environ.get("KAGGLE_KEY"):
        return Credentials(environ["KAGGLE_USERNAME"], environ["KAGGLE_KEY"])
    folder = Path(environ["KAGGLE_CONFIG_DIR"]) if environ.get("KAGGLE_CONFIG_DIR") else (home or Path.home()) / ".kaggle"
    token = folder / "kaggle.json"
    if not token.is_file():
        return None
    try:
        data = json.loads(token.read_text())
        return Credentials(str(data["username"]), str(data["key"]))
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{token}: not a Kaggle API token (expected JSON with 'username' and 'key'): {error}") from error


def source_url(remote: RemoteFile, mirror: str | None = None) -> str:
    """The URL ``remote`` is fetched from; ``mirror`` (``http[s]://host[:port][/prefix]``) replaces
    the scheme and host and keeps the path, for institutional mirrors (and the tests' local server)."""
    if remote.kaggle:
        url = f"{KAGGLE_API}/{_kaggle_path(remote.kaggle)}"
    elif remote.url:
        url = remote.url
    else:
        raise ValueError(f"{remote.name}: the registry gives neither a URL nor a Kaggle source")
    if not mirror:
        return url
    base = urlsplit(mirror)
    original = urlsplit(url)
    return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + original.path, original.query, ""))


def _kaggle_path(kaggle: str) -> str:
    kind, _, name = kaggle.partition("/")
    if kind == "datasets":
        return f"datasets/download/{name}"
    if kind == "competitions":
        return f"competitions/data/download-all/{name}"
    raise ValueError(f"kaggle source must start with 'datasets/' or 'competitions/', got {kaggle!r}")


class ResumableDownloader:
    """A pooch downloader that resumes from ``<cache>/<name>.part`` with HTTP Range requests.

    Called by pooch as ``downloader(url, output_file, pooch)``; on success the completed part
    file is moved onto ``output_file`` (pooch's temporary file) for pooch to check and rename.
    """

    def __init__(self, part_path: Path, auth: Credentials | None = None, retries: int = 3, timeout: float = 60.0, wait_s: float = 1.0):
        self.part_path = Path(part_path)
        self.meta_path = self.part_path.with_name(self.part_path.name + ".json")
        self.auth = auth
        self.retries = retries
        self.timeout = timeout
        self.wait_s = wait_s

    def __call__(self, url: str, output_file: str | Path, pooch: object = None) -> None:
        # Network failures are retried here, each retry resuming where the last one stopped; pooch
        # itself is told not to retry, since its retries would re-download after a hash mismatch.
        import requests

        for attempt in range(self.retries + 1):
            try:
                self._attempt(url)
                break
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError, IncompleteDownload) as error:
                if attempt == self.retries:
                    raise
                log.warning("%s: %s; retrying (%d left), resuming from the bytes received", self.part_path.name, error, self.retries - attempt)
                time.sleep(self.wait_s * (attempt + 1))
        shutil.move(str(self.part_path), str(output_file))
        self.meta_path.unlink(missing_ok=True)

    def _attempt(self, url: str) -> None:
        import requests

        have = self.part_path.stat().st_size if self.part_path.exists() else 0
        validator = json.loads(self.meta_path.read_text()).get("validator") if self.meta_path.exists() and have else None
        headers = {}
        if have and validator:
            headers = {"Range": f"bytes={have}-", "If-Range": validator}
        auth = (self.auth.username, self.auth.key) if self.auth else None
        with requests.get(url, headers=headers, auth=auth, stream=True, timeout=self.timeout, allow_redirects=True) as response:
            if response.status_code in (401, 403):
                raise PermissionError(f"{url}: HTTP {response.status_code}; check the Kaggle token, and for a competition "
                                      "accept its rules on the competition page first")
            if response.status_code == 416:  # our part is not a prefix of what the server has now
                self.part_path.unlink(missing_ok=True)
                raise IncompleteDownload(f"{url}: the server refused to resume; starting over")
            response.raise_for_status()
            if response.status_code == 206:
                mode, done = "ab", have
                log.info("resuming %s at %.1f MB", self.part_path.name, have / 2**20)
            else:
                mode, done = "wb", 0
            total = done + int(response.headers.get("Content-Length", 0)) or None
            new_validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            self.part_path.parent.mkdir(parents=True, exist_ok=True)
            self.meta_path.write_text(json.dumps({"url": url, "validator": new_validator}))
            last = time.monotonic()
            with open(self.part_path, mode) as out:
                for chunk in response.iter_content(CHUNK):
                    out.write(chunk)
                    done += len(chunk)
                    if time.monotonic() - last > PROGRESS_EVERY_S:
                        last = time.monotonic()
                        log.info("%s: %.1f MB%s", self.part_path.name, done / 2**20, f" of {total / 2**20:.1f}" if total else "")
        if total is not None and done != total:
            raise IncompleteDownload(f"{url}: received {done} of {total} bytes")
        log.info("%s: received %.1f MB", self.part_path.name, done / 2**20)


def file_hashes(path: Path, algorithms: tuple[str, ...] = ("sha256",)) -> dict[str, str]:
    """Hex digests of ``path`` for each of ``algorithms``, in one read (archives are gigabytes)."""
    digests = {name: hashlib.new(name) for name in dict.fromkeys(algorithms)}
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(CHUNK * 16), b""):
            for digest in digests.values():
                digest.update(block)
    return {name: digest.hexdigest() for name, digest in digests.items()}


def file_hash(path: Path, algorithm: str = "sha256") -> str:
    return file_hashes(path, (algorithm,))[algorithm]


def check_hash(path: Path, known_hash: str | None) -> str:
    """Verify ``path`` against ``known_hash`` (``md5:…``/``sha256:…``/bare SHA-256); return its SHA-256."""
    algorithm, _, expected = (known_hash or "").rpartition(":")
    algorithm = algorithm or "sha256"
    digests = file_hashes(path, ("sha256", algorithm))
    if known_hash and digests[algorithm].lower() != expected.lower():
        raise ChecksumError(f"{path}: {algorithm} checksum mismatch: expected {expected}, got {digests[algorithm]}")
    return digests["sha256"]


@dataclass(frozen=True)
class Fetched:
    """A verified local archive and its SHA-256 (recorded in the dataset's manifest)."""

    path: Path
    sha256: str


def manual_instructions(remote: RemoteFile, dataset: str, cache_dir: Path) -> str:
    if remote.manual:
        return (f"download {remote.name} by hand from {remote.manual} (it needs a registration), then set "
                f"datasets.{dataset}.local_path to the folder that holds it, or put it at {cache_dir / remote.name}")
    return (f"download {remote.name} by hand from {remote.page} (sign in; for a competition, accept its rules), then either "
            f"set datasets.{dataset}.local_path to the folder that holds {remote.name}, or put it at {cache_dir / remote.name}; "
            "or install a Kaggle API token in ~/.kaggle/kaggle.json (https://www.kaggle.com/settings → Create New Token)")


def fetch(remote: RemoteFile, dataset: str, cache_dir: Path, known_hash: str | None = None, mirror: str | None = None,
          local_path: Path | None = None, retries: int = 3, credentials: Credentials | None = None) -> Fetched:
    """A verified local copy of ``remote``: from ``local_path`` (a manual download, checked in place),
    the cache, or the network (into ``cache_dir``). ``known_hash`` overrides the registry's."""
    known_hash = known_hash or remote.known_hash
    if local_path is not None:
        candidate = Path(local_path) / remote.name
        if not candidate.is_file():
            raise FileNotFoundError(f"datasets.{dataset}.local_path: {candidate} does not exist; {manual_instructions(remote, dataset, cache_dir)}")
        return Fetched(candidate, check_hash(candidate, known_hash))
    cache_dir = Path(cache_dir)
    target = cache_dir / remote.name
    if target.is_file() and not known_hash:
        # no hash to check against: a complete earlier download is trusted (its SHA-256 is in manifest.json)
        return Fetched(target, file_hash(target))
    if remote.manual and not mirror and not target.is_file():
        raise MissingManualDownloadError(
            f"{dataset}: {remote.name} cannot be downloaded for you: its publisher requires a registration. Sign up and "
            f"download it from {remote.manual}, then set datasets.{dataset}.local_path to the folder that holds {remote.name} "
            f"(with the dataset's other archives), or put it at {target}; a mirror: of your institution works too")
    auth = (credentials or kaggle_credentials()) if remote.kaggle else None
    if remote.kaggle and auth is None and not mirror and not target.is_file():
        raise MissingCredentialsError(f"{dataset}: {remote.name} is hosted on Kaggle and no API token was found; "
                                      f"{manual_instructions(remote, dataset, cache_dir)}")
    import pooch

    url = source_url(remote, mirror)
    repository = pooch.create(path=cache_dir, base_url="", registry={remote.name: known_hash}, urls={remote.name: url})
    downloader = ResumableDownloader(cache_dir / f"{remote.name}.part", auth, retries=retries)
    try:
        path = Path(repository.fetch(remote.name, downloader=downloader))
    except ValueError as error:
        if "hash" in str(error).lower():
            raise ChecksumError(f"{dataset}: {remote.name} from {url}: {error}") from error
        raise
    # pooch has checked the published hash (often md5); the manifest records SHA-256, one more read.
    return Fetched(path, file_hash(path))
