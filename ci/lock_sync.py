#!/usr/bin/env python3
"""requirements.lock -> requirements-hashed.lock (pins with sha256) and envs/camfaith.yaml's pins.

The Dockerfile installs requirements-hashed.lock with `pip install --require-hashes --no-deps`, so
the image gets exactly the files recorded here or fails to build. requirements.lock itself stays
hash-free because `make run`/`make test` install it on whatever machine they run on (macOS, another
glibc, a local wheel mirror), where the Linux file recorded here would not be the one pip picks.

Run by `make lock` after requirements.lock is re-resolved (needs the package index):

    python ci/lock_sync.py                     # regenerate both from requirements.lock (hashes from PyPI)
    python ci/lock_sync.py --check             # offline: do both pin what requirements.lock pins?
    python ci/lock_sync.py --verify-files DIR  # do the wheels/sdists in DIR match the recorded hashes?

envs/camfaith.yaml lists the pins under `pip:` (it cannot include the lock by path: see its header);
only that list is rewritten, the rest of the file is kept.

Which file: the one pip installs for CPython 3.11 on Linux x86_64 with glibc 2.36 (the Debian
bookworm image), found with `pip install --dry-run --report` restricted to that platform. Only that
file's hash is recorded (not every file of the release, as pip-compile does), so the hashed lock is
specific to the image's platform on purpose. Hashes come from the index's own listing (PyPI publishes
a sha256 for every file), never from a local mirror: pip configuration files and PIP_* variables
that add indexes, find-links or constraints are ignored while hashing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "requirements.lock"
HASHED = ROOT / "requirements-hashed.lock"
CONDA_ENV = ROOT / "envs" / "camfaith.yaml"
CONDA_PIP = "  - pip:\n"  # the line after which envs/camfaith.yaml lists the pins
DEFAULT_INDEX = "https://pypi.org/simple"

# The image: Debian bookworm (glibc 2.36), CPython 3.11, x86_64. pip expands no manylinux range by
# itself for --platform, so every glibc level the image accepts is listed, newest first.
PYTHON_VERSION = "3.11"
PLATFORMS = [f"manylinux_2_{minor}_x86_64" for minor in range(36, 4, -1)] + [
    "manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64",
]
# PIP_* variables that only say how to reach the index; every other one (find-links, extra indexes,
# constraints, ...) could change which file is picked and is dropped.
KEEP_PIP_ENV = {"PIP_CERT", "PIP_CLIENT_CERT", "PIP_PROXY", "PIP_DEFAULT_TIMEOUT", "PIP_TIMEOUT", "PIP_RETRIES"}

HEADER = """\
# Generated from requirements.lock by `make lock` (ci/lock_sync.py): do not edit by hand.
# The same pins, each with the sha256 of the one file pip installs for it on Linux x86_64 with
# CPython {python} and glibc 2.36 (the Debian bookworm image), as published on {index}.
# The Dockerfile installs this file with `pip install --require-hashes --no-deps`; hashes of other
# platforms' files are not recorded. tests/test_container.py checks that the pins equal
# requirements.lock's. The comment after each pin names the file the hash belongs to.
"""

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")
HASHED_LINE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) --hash=sha256:([0-9a-f]{64})\s+#\s+(\S+)$")


def normalise(name: str) -> str:
    """PEP 503 name, so `typing_extensions` and `Typing-Extensions` are the same project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def read_pins(path: Path = LOCK) -> dict[str, tuple[str, str]]:
    """normalised name -> (name as written, version) for every `name==version` line."""
    pins = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = PIN.match(line)
        if not match:
            raise SystemExit(f"{path}:{number}: not an exact pin (name==version): {line!r}")
        pins[normalise(match.group(1))] = (match.group(1), match.group(2))
    return pins


def read_hashed(path: Path = HASHED) -> dict[str, tuple[str, str, str]]:
    """normalised name -> (version, sha256, file name) from a hashed lock written by this script."""
    entries = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        match = HASHED_LINE.match(line)
        if not match:
            raise SystemExit(f"{path}:{number}: not `name==version --hash=sha256:<64 hex>  # file`: {line!r}")
        entries[normalise(match.group(1))] = (match.group(2), match.group(3), match.group(4))
    return entries


def differences(pins: dict[str, tuple[str, str]], derived: dict[str, tuple[str, ...]]) -> list[str]:
    """What a derived file (normalised name -> (version, ...)) gets wrong about the lock's pins."""
    problems = [f"{pins[n][0]}=={pins[n][1]} is missing" for n in sorted(pins.keys() - derived.keys())]
    problems += [f"{n}=={derived[n][0]} is not in {LOCK.name}" for n in sorted(derived.keys() - pins.keys())]
    problems += [
        f"{pins[n][0]} is {derived[n][0]}, {LOCK.name} pins {pins[n][1]}"
        for n in sorted(pins.keys() & derived.keys()) if pins[n][1] != derived[n][0]
    ]
    return problems


def pip_environment() -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_") or key in KEEP_PIP_ENV}
    env["PIP_CONFIG_FILE"] = os.devnull  # pip then reads no global, user or site configuration file
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def resolve_files(index: str) -> dict[str, dict]:
    """normalised name -> pip report entry, for the files pip would install on the image's platform."""
    with tempfile.TemporaryDirectory() as scratch:
        report = Path(scratch) / "report.json"
        command = [
            sys.executable, "-m", "pip", "install", "--quiet", "--dry-run", "--ignore-installed", "--no-deps",
            "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", f"cp{PYTHON_VERSION.replace('.', '')}",
            *(option for platform in PLATFORMS for option in ("--platform", platform)),
            "--index-url", index, "--report", str(report), "-r", str(LOCK),
        ]
        result = subprocess.run(command, env=pip_environment(), capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SystemExit(f"pip could not find every pinned file on {index}:\n{result.stdout}{result.stderr}")
        return {normalise(item["metadata"]["name"]): item for item in json.loads(report.read_text())["install"]}


def sha256_of(item: dict) -> str:
    archive = item["download_info"].get("archive_info", {})
    if "hashes" in archive and "sha256" in archive["hashes"]:
        return archive["hashes"]["sha256"]
    algorithm, _, digest = archive.get("hash", "").partition("=")  # pip < 23 writes only `hash`
    if algorithm != "sha256" or not digest:
        raise SystemExit(f"pip's report has no sha256 for {item['download_info']['url']}")
    return digest


def generate(index: str) -> None:
    pins = read_pins()
    found = resolve_files(index)
    lines = [HEADER.format(python=PYTHON_VERSION, index=index)]
    for key, (name, version) in pins.items():
        item = found.get(key)
        if item is None or item["metadata"]["version"] != version:
            got = item["metadata"]["version"] if item else "nothing"
            raise SystemExit(f"{name}=={version}: pip's report has {got}")
        filename = item["download_info"]["url"].rsplit("/", 1)[-1].split("#", 1)[0]
        lines.append(f"{name}=={version} --hash=sha256:{sha256_of(item)}  # {filename}\n")
    HASHED.write_text("".join(lines))
    print(f"wrote {HASHED.name}: {len(pins)} pins with sha256 from {index}")
    write_conda_env(pins)


def read_conda_pins(path: Path = CONDA_ENV) -> dict[str, tuple[str, str]]:
    """normalised name -> (name, version) from the `pip:` list of the conda environment file."""
    import yaml  # PyYAML is in the lock; imported here so that the hashing part needs only the stdlib

    dependencies = yaml.safe_load(path.read_text())["dependencies"]
    sections = [entry["pip"] for entry in dependencies if isinstance(entry, dict) and "pip" in entry]
    if len(sections) != 1:
        raise SystemExit(f"{path}: expected one `pip:` list under dependencies, found {len(sections)}")
    pins = {}
    for requirement in sections[0]:
        match = PIN.match(requirement)
        if not match or match.group(0) != requirement:
            raise SystemExit(f"{path}: not an exact pin (name==version): {requirement!r}")
        pins[normalise(match.group(1))] = (match.group(1), match.group(2))
    return pins


def write_conda_env(pins: dict[str, tuple[str, str]]) -> None:
    text = CONDA_ENV.read_text()
    if text.count(CONDA_PIP) != 1 or not text.endswith("\n"):
        raise SystemExit(f"{CONDA_ENV}: expected the pins to follow one line {CONDA_PIP.strip()!r} at the end of the file")
    head = text[: text.index(CONDA_PIP) + len(CONDA_PIP)]
    CONDA_ENV.write_text(head + "".join(f"      - {name}=={version}\n" for name, version in pins.values()))
    print(f"wrote {CONDA_ENV.relative_to(ROOT)}: {len(pins)} pins under pip:")


def check() -> int:
    pins = read_pins()
    problems = [f"{HASHED.name}: {problem}" for problem in differences(pins, read_hashed())]
    conda = read_conda_pins()
    conda_versions = {name: (version,) for name, (_, version) in conda.items()}
    problems += [f"{CONDA_ENV.relative_to(ROOT)}: {problem}" for problem in differences(pins, conda_versions)]
    for problem in problems:
        print(f"out of sync with {LOCK.name}: {problem}", file=sys.stderr)
    if problems:
        print("regenerate with `make lock` (or `python ci/lock_sync.py`)", file=sys.stderr)
    return 1 if problems else 0


def verify_files(folders: list[Path]) -> int:
    """Compare every recorded file that lies in one of the folders with its recorded sha256."""
    recorded = {filename: digest for _, digest, filename in read_hashed().values()}
    matched = mismatched = 0
    for folder in folders:
        for path in sorted(folder.iterdir()):
            if path.name not in recorded:
                continue
            digest = hashlib.sha256()
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
            same = digest.hexdigest() == recorded[path.name]
            matched += same
            mismatched += not same
            print(f"{'same' if same else 'DIFFERENT'}  {path}" + ("" if same else f"\n  recorded {recorded[path.name]}\n  file     {digest.hexdigest()}"))
    print(f"{matched} file(s) match {HASHED.name}, {mismatched} differ")
    return 1 if mismatched else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--index-url", default=os.environ.get("LOCK_INDEX_URL", DEFAULT_INDEX),
                        help=f"index whose published hashes are recorded (default {DEFAULT_INDEX}; env LOCK_INDEX_URL)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check that both files pin what requirements.lock pins (offline)")
    mode.add_argument("--verify-files", nargs="+", type=Path, metavar="DIR",
                      help="check local copies of the recorded files (a wheel cache, a mirror's files/) against the hashes")
    args = parser.parse_args()
    if args.check:
        return check()
    if args.verify_files:
        return verify_files(args.verify_files)
    generate(args.index_url)
    return check()


if __name__ == "__main__":
    sys.exit(main())
