#!/usr/bin/env bash
# make gpu-check: the CUDA checks, for a lent GPU machine (docs/gpu-check.md).
#
# Runs with the machine's own Python (PYTHON, default python3) from this checkout: camfaith from src/
# (PYTHONPATH, nothing installed, no .venv), and modules the machine lacks from GPU_CHECK_DEPS
# (default build/gpu-deps: a `pip install --target` folder, or one per Python as build/gpu-deps/cp312)
# and from wheels in GPU_CHECK_WHEELS (default build/gpu-wheels), unpacked into a temporary folder.
# Parts, each under its own time limit and all together under GPU_CHECK_LIMIT_S (default 450 s):
#   env      the device, driver, CUDA, cuDNN and package versions       -> environment.md
#   imports  every module the check needs; a missing one stops it (3)  -> imports.md
#   tests    pytest -rA tests/test_cuda.py                              -> pytest.log, pytest-junit.xml
#   bench    ci/gpu_bench.py: images/s against the forward floor        -> gpu_bench.md, gpu_bench.jsonl
# GPU_CHECK_PARTS picks parts (default "env imports tests bench"). Outputs go to OUT (default
# results/gpu-check), with summary.md. Exit status: 0 every part passed; 2 no CUDA device (checked
# first, nothing else is run); 3 a module is missing; 1 a part failed or ran out of time.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
START_NS=$(date +%s%N)

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "gpu-check: no Python interpreter '$PYTHON' (set PYTHON=); nothing was run" >&2
    exit 3
fi

# --- 1. a CUDA device, or stop at once ---------------------------------------------------------------
probe=$("$PYTHON" -c '
import sys
tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
try:
    import torch
except Exception as error:
    print("no-torch", tag, f"{type(error).__name__}: {error}")
    raise SystemExit(0)
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    available = torch.cuda.is_available()
why = "; ".join(str(w.message).splitlines()[0] for w in caught)[:300]
print("cuda" if available else "no-cuda", tag, torch.__version__, why)
' 2>/dev/null) || probe="no-torch ? $PYTHON could not run"
read -r state python_tag probe_detail <<<"$probe"
case "$state" in
    cuda) ;;
    no-cuda)
        echo "gpu-check: no CUDA device (torch.cuda.is_available() is False); nothing was run" >&2
        read -r torch_version why <<<"$probe_detail"
        if [[ -n "${why:-}" ]]; then echo "gpu-check: torch $torch_version says: $why" >&2; fi
        if command -v nvidia-smi >/dev/null 2>&1 && timeout 10 nvidia-smi -L >/dev/null 2>&1; then
            echo "gpu-check: nvidia-smi does list a GPU: is torch $torch_version a CPU-only build, or CUDA_VISIBLE_DEVICES empty?" >&2
        fi
        exit 2
        ;;
    *)
        echo "gpu-check: $PYTHON cannot import torch ($probe_detail), so no CUDA device can be used; set PYTHON= to an interpreter with PyTorch; nothing was run" >&2
        exit 3
        ;;
esac

OUT="${OUT:-results/gpu-check}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
TOTAL_LIMIT_S="${GPU_CHECK_LIMIT_S:-450}"
PARTS="${GPU_CHECK_PARTS:-env imports tests bench}"
DEPS="${GPU_CHECK_DEPS:-build/gpu-deps}"
WHEELS="${GPU_CHECK_WHEELS:-build/gpu-wheels}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
path="$ROOT/src"
for folder in "$DEPS/$python_tag" "$DEPS"; do
    if [[ -d "$folder" ]]; then path="$path:$(cd "$folder" && pwd)"; fi
done
# Carried wheels are unpacked here (no pip, no index): pure-Python ones, and binary ones for this Python.
if [[ -d "$WHEELS" ]]; then
    unpacked=()
    for wheel in "$WHEELS"/*.whl; do
        [[ -e "$wheel" ]] || continue
        case "$(basename "$wheel")" in
            *-py3-none-any.whl | *-py2.py3-none-any.whl | *-"$python_tag"-*.whl | *-abi3-*.whl)
                "$PYTHON" -m zipfile -e "$wheel" "$WORK/site"
                unpacked+=("$(basename "$wheel")")
                ;;
        esac
    done
    if ((${#unpacked[@]})); then
        path="$path:$WORK/site"
        echo "gpu-check: unpacked ${#unpacked[@]} carried wheel(s) for $python_tag from $WHEELS: ${unpacked[*]}"
    fi
fi
export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 MPLBACKEND=Agg
export MPLCONFIGDIR="$WORK/matplotlib"  # matplotlib (imported by captum) wants a writable config folder

echo "gpu-check: $PYTHON ($python_tag), torch $probe_detail, CUDA available; PYTHONPATH=$PYTHONPATH; outputs in $OUT"
if command -v nvidia-smi >/dev/null 2>&1; then timeout 15 nvidia-smi -L || true; fi

seconds_since() {  # seconds since a date +%s%N stamp, one decimal
    local ms=$((($(date +%s%N) - $1) / 1000000))
    printf '%d.%d' $((ms / 1000)) $(((ms % 1000) / 100))
}

SUMMARY="$OUT/summary.md"
printf '# gpu-check summary\n\n| part | result | seconds | limit (s) |\n|---|---|---|---|\n' >"$SUMMARY"
STATUS=0
LAST_RC=0

# part NAME LIMIT_S LOG COMMAND...: run COMMAND under timeout (capped by what is left of the total),
# output to the terminal and LOG; prints and records its result and seconds; sets LAST_RC.
part() {
    local name=$1 limit=$2 log=$3
    shift 3
    local used=$((($(date +%s%N) - START_NS) / 1000000000))
    local left=$((TOTAL_LIMIT_S - used - 10))
    if ((left < limit)); then limit=$left; fi
    if ((limit < 10)); then
        echo "gpu-check: part $name: not run, the total limit of $TOTAL_LIMIT_S s is reached"
        echo "| $name | not run (total limit) | 0 | 0 |" >>"$SUMMARY"
        LAST_RC=124
        STATUS=1
        return 0
    fi
    echo "gpu-check: part $name (limit $limit s)"
    local started rc result
    started=$(date +%s%N)
    set +e
    timeout --kill-after=5 "$limit" "$@" 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    case $rc in
        0) result="passed" ;;
        124 | 137) result="timed out after $limit s" ;;
        *) result="failed (exit $rc)" ;;
    esac
    local took
    took=$(seconds_since "$started")
    echo "gpu-check: part $name: $result in $took s"
    echo "| $name | $result | $took | $limit |" >>"$SUMMARY"
    LAST_RC=$rc
    if ((rc != 0)); then STATUS=1; fi
    return 0
}

wanted() { [[ " $PARTS " == *" $1 "* ]]; }

# --- 2. environment -------------------------------------------------------------------------------------
ENV_PY=$(
    cat <<'PY'
import importlib.metadata as metadata
import os
import platform
import subprocess
import sys
import time

import torch

out = sys.argv[1]
stamp = time.strftime("%Y-%m-%d %H:%M:%S %Z")
lines = ["# gpu-check environment", "", f"- date: {stamp}", f"- host: {platform.node()}, {platform.platform()}",
         f"- Python: {sys.executable} {platform.python_version()}", "- PYTHONPATH: " + os.environ.get("PYTHONPATH", ""),
         f"- torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
         f"TF32 allowed: cuDNN {torch.backends.cudnn.allow_tf32}, cuBLAS matmul {torch.backends.cuda.matmul.allow_tf32}"]
for index in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(index)
    lines.append(f"- cuda:{index}: {p.name}, {p.total_memory / 2**30:.1f} GiB, compute capability {p.major}.{p.minor}, "
                 f"{p.multi_processor_count} SMs")
lines.append("- CUDA_VISIBLE_DEVICES: " + os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)") + f"; CPUs: {os.cpu_count()}")
for name in ("torchvision", "numpy", "pandas", "pyarrow", "h5py", "scipy", "scikit-learn", "pillow", "pyyaml", "captum", "matplotlib",
             "pytest", "jsonschema"):
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        version = "no installed metadata (absent, or on PYTHONPATH only)"
    lines.append(f"- {name}: {version}")
try:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10).stdout.strip()
except Exception:
    commit = ""
lines.append("- checkout: " + (commit or "(no git)"))
query = "name,driver_version,memory.total,memory.used,temperature.gpu,power.draw,clocks.sm"
try:
    smi = subprocess.run(["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True, text=True, timeout=15).stdout.strip()
except Exception as error:
    smi = f"(nvidia-smi: {error})"
text = "\n".join(lines) + "\n\n```\n" + smi + "\n```\n"
with open(f"{out}/environment.md", "w") as handle:
    handle.write(text)
print(text)
PY
)
if wanted env; then part env 30 "$OUT/environment.log" "$PYTHON" -c "$ENV_PY" "$OUT"; fi

# --- 3. imports -----------------------------------------------------------------------------------------
IMPORTS_PY=$(
    cat <<'PY'
import importlib
import sys
import warnings

warnings.simplefilter("ignore")  # some packages warn when their __version__ is read
out = sys.argv[1]
# module -> what to carry when it is missing
NEEDED = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "pandas": "pandas", "pyarrow": "pyarrow", "h5py": "h5py",
          "scipy": "scipy", "sklearn": "scikit-learn", "PIL": "pillow", "captum": "captum", "matplotlib": "matplotlib (captum imports it)",
          "packaging": "packaging (captum)", "tqdm": "tqdm (captum)", "kiwisolver": "kiwisolver (matplotlib)",
          "contourpy": "contourpy (matplotlib)", "cycler": "cycler (matplotlib)", "fontTools": "fonttools (matplotlib)",
          "pyparsing": "pyparsing (matplotlib)", "dateutil": "python-dateutil (matplotlib, pandas)", "pytest": "pytest"}
# The project needs these elsewhere (the Snakefile reads and validates the config); this check does not.
ELSEWHERE = {"yaml": "pyyaml", "jsonschema": "jsonschema"}
# What tests/test_cuda.py and ci/gpu_bench.py import, so that a module one of them needs in turn is named too.
CAMFAITH = ("camfaith.pipeline", "camfaith.scoring", "camfaith.training", "camfaith.memory", "camfaith.store", "camfaith.evaluation",
            "camfaith.explainers.cam_family", "camfaith.explainers.captum_methods", "camfaith.explainers.scorecam",
            "camfaith.explainers.controls", "camfaith.metrics.aopc", "camfaith.metrics.haas", "camfaith.metrics.max_sensitivity",
            "camfaith.data.synthetic", "camfaith.data.index", "camfaith.data.split", "camfaith.data.images")
missing, lines = {}, ["# gpu-check imports", ""]
for name, dist in {**NEEDED, **ELSEWHERE}.items():
    try:
        module = importlib.import_module(name)
        lines.append(f"- {name}: {getattr(module, '__version__', '?')} ({getattr(module, '__file__', '?')})")
    except Exception as error:
        lines.append(f"- {name}: MISSING ({type(error).__name__}: {error})")
        if name in NEEDED:
            missing[name] = dist
        else:
            lines[-1] += f"; not needed by gpu-check ({dist}: config reading and validation only)"
for name in CAMFAITH:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as error:
        lines.append(f"- {name}: FAILS ({error})")
        top = (error.name or "?").split(".")[0]
        if top != "camfaith":
            missing.setdefault(top, f"{top} (imported by {name})")
    except Exception as error:
        lines.append(f"- {name}: FAILS ({type(error).__name__}: {error})")
        missing.setdefault(name, f"{name} fails to import: {type(error).__name__}: {error}")
try:
    import camfaith

    lines.append(f"- camfaith from {camfaith.__path__[0]}")
except ImportError as error:
    missing.setdefault("camfaith", f"camfaith itself ({error}): is src/ on PYTHONPATH?")
if missing:
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    names = ", ".join(sorted(missing))
    what = "; ".join(missing[m] for m in sorted(missing))
    lines += ["", f"MISSING, needed by gpu-check: {names}",
              f"Carry their wheels ({what}): on the session machine, pip download --no-deps --only-binary=:all: into build/gpu-wheels "
              f"(pure-Python ones, and binary ones for {tag} manylinux x86_64), then run again with carry [\"build/gpu-wheels\"] "
              f"(docs/gpu-check.md)."]
text = "\n".join(lines) + "\n"
with open(f"{out}/imports.md", "w") as handle:
    handle.write(text)
print(text)
sys.exit(3 if missing else 0)
PY
)
if wanted imports; then
    part imports 60 "$OUT/imports.log" "$PYTHON" -c "$IMPORTS_PY" "$OUT"
    if ((LAST_RC == 3)); then
        echo "gpu-check: stopped: a module gpu-check needs is missing (above, and $OUT/imports.md)" >&2
        exit 3
    fi
fi

# --- 4. tests ---------------------------------------------------------------------------------------------
if wanted tests; then
    part tests 210 "$OUT/pytest.log" env CUBLAS_WORKSPACE_CONFIG=:4096:8 "$PYTHON" -m pytest -q -rA -p no:cacheprovider \
        --junitxml "$OUT/pytest-junit.xml" tests/test_cuda.py
    # On a CUDA machine every test must run: a skip there means the check did not check.
    if [[ -f "$OUT/pytest-junit.xml" ]] && grep -q '<skipped' "$OUT/pytest-junit.xml"; then
        echo "gpu-check: tests were skipped on a machine with CUDA (see $OUT/pytest.log)" >&2
        echo "| tests | some skipped on a CUDA machine | | |" >>"$SUMMARY"
        STATUS=1
    fi
fi

# --- 5. throughput ----------------------------------------------------------------------------------------
if wanted bench; then
    part bench 150 "$OUT/gpu_bench.log" "$PYTHON" ci/gpu_bench.py --out "$OUT/gpu_bench.md" --budget-s 120
fi

total=$(seconds_since "$START_NS")
echo "| all | $([[ $STATUS == 0 ]] && echo passed || echo FAILED) | $total | $TOTAL_LIMIT_S |" >>"$SUMMARY"
echo
cat "$SUMMARY"
echo "gpu-check: $([[ $STATUS == 0 ]] && echo 'all parts passed' || echo 'FAILED') in $total s; outputs in $OUT"
exit "$STATUS"
