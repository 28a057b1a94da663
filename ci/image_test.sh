#!/usr/bin/env bash
# Proof that the Dockerfile builds and runs camfaith (`make image-test`, docs/container.md).
#
# Starts a private Docker engine (Debian's docker.io; vfs storage, no bridge, no iptables, all state
# in one temporary directory), builds a stand-in for the Dockerfile's base image with mmdebstrap from
# Debian's packages (no registry is reachable here, so the real debian:*-slim cannot be pulled; the
# stand-in is tagged with the exact name the Dockerfile's FROM uses), builds the image, checks that
# it holds exactly requirements.lock and runs as non-root, then runs tests/tiny_config.yaml in it
# with the outputs on bind mounts and checks them from the host. Needs root on a Debian machine;
# installs docker.io and mmdebstrap when missing. Every wait is bounded; dockerd, its containerd
# and the wheel server are stopped by pid on exit, and the temporary directory (tens of GB: vfs
# copies every layer in full) is unmounted and removed.
#
# PyPI's wheels for torch and the CUDA libraries are also on this machine's disk (/opt/pypi-more,
# /opt/pypi, /opt/wheels). They are served on 127.0.0.1 and passed to the build as pip index URLs
# (build args; the Dockerfile's defaults are PyPI's), so the build fetches them over HTTP like from
# any mirror, no host path enters the image, and --require-hashes proves they are PyPI's files.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGE=${IMAGE_TEST_TAG:-camfaith:image-test}
BUILD_LIMIT=${IMAGE_TEST_BUILD_LIMIT:-2400}   # seconds for docker build (about 5 min here)
RUN_LIMIT=${IMAGE_TEST_RUN_LIMIT:-1200}       # seconds for the tiny workflow in the container
NEED_GB=${IMAGE_TEST_NEED_GB:-35}             # free disk the vfs layers and containers need
KEEP_LOGS=${IMAGE_TEST_LOGS:-$ROOT/logs/image-test}   # build, run and daemon logs are copied here
MIRROR=${IMAGE_TEST_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${IMAGE_TEST_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
# Local copies of PyPI files: folders with a PEP 503 simple/ index, and plain wheel folders.
LOCAL_INDEXES=${IMAGE_TEST_LOCAL_INDEXES:-/opt/pypi-more /opt/pypi}
LOCAL_WHEELS=${IMAGE_TEST_LOCAL_WHEELS:-/opt/wheels}
DOCKER=/usr/bin/docker   # docker.io's client: it has BuildKit built in (a newer CLI needs the buildx plugin)

say() { printf '[image-test %s] %s\n' "$(date +%T)" "$*"; }
fail() { say "FAILED: $*" >&2; exit 1; }
wait_for() { # wait_for SECONDS WHAT COMMAND...: poll until COMMAND succeeds, never longer
  local limit=$1 what=$2; shift 2
  local deadline=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do ((SECONDS < deadline)) || fail "$what not ready after ${limit}s"; sleep 0.5; done
}
stop_pid() { # stop_pid FILE NAME: TERM the process whose pid FILE holds, KILL it after 30 s
  local file=$1 name=$2 pid
  [[ -s $file ]] || return 0
  pid=$(cat "$file")
  kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
  say "$name (pid $pid) ignored SIGTERM for 30 s: SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
}

[[ $(id -u) == 0 ]] || fail "needs root (dockerd, mmdebstrap)"
[[ -f $ROOT/Dockerfile ]] || fail "no Dockerfile in $ROOT"

# ---- tools -------------------------------------------------------------------------------------
if ! command -v dockerd >/dev/null || [[ ! -x $DOCKER ]] || ! command -v mmdebstrap >/dev/null; then
  say "installing docker.io and mmdebstrap"
  export DEBIAN_FRONTEND=noninteractive
  timeout -s KILL 600 apt-get install -y --no-install-recommends docker.io mmdebstrap >/dev/null \
    || { timeout -s KILL 300 apt-get update -q >/dev/null \
         && timeout -s KILL 600 apt-get install -y --no-install-recommends docker.io mmdebstrap >/dev/null; } \
    || fail "could not install docker.io and mmdebstrap with apt-get"
fi

# ---- one temporary directory for everything ------------------------------------------------------
PARENT=${IMAGE_TEST_DIR:-/var/tmp}
free_gb=$(( $(df --output=avail -k "$PARENT" | tail -n 1) / 1024 / 1024 ))
((free_gb >= NEED_GB)) || fail "$PARENT has ${free_gb} GB free; the vfs layers need about ${NEED_GB} GB (IMAGE_TEST_DIR=another disk)"
WORK=$(mktemp -d "$PARENT/camfaith-image-test.XXXXXX")
OUT=$WORK/out
CONTAINER=camfaith-image-test-$$

cleanup() {
  local status=$?
  set +e
  if [[ -S $WORK/docker.sock ]]; then
    timeout -s KILL 60 "$DOCKER" rm -f "$CONTAINER" "$CONTAINER-denied" >/dev/null 2>&1
  fi
  stop_pid "$WORK/http.pid" "wheel server"
  stop_pid "$WORK/dockerd.pid" dockerd
  stop_pid "$WORK/dockerd-launch.pid" dockerd
  # dockerd normally stops the containerd it started; make sure, by its recorded pid.
  stop_pid "$WORK/exec/containerd/containerd.pid" containerd
  # Network namespaces and any other mount dockerd left under the temporary directory.
  grep -F " $WORK/" /proc/self/mountinfo | awk '{print $5}' | sort -r | while read -r target; do
    umount "$target" 2>/dev/null || umount -l "$target" 2>/dev/null
  done
  if ((status != 0)) && [[ -s $WORK/dockerd.log ]]; then
    echo "---- tail of dockerd.log" >&2; tail -n 20 "$WORK/dockerd.log" >&2
  fi
  stop_pid "$WORK/disk.pid" "disk sampler"
  if mkdir -p "$KEEP_LOGS" 2>/dev/null; then
    rm -f "$KEEP_LOGS"/*.log "$KEEP_LOGS"/*.txt
    cp "$WORK"/*.log "$WORK"/*.txt "$KEEP_LOGS"/ 2>/dev/null
    say "logs kept in $KEEP_LOGS"
  fi
  say "removing $WORK"
  timeout -s KILL 900 rm -rf "$WORK" || say "could not remove all of $WORK"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Disk high-water mark of the whole test (vfs stores every layer and container in full): the free
# space of the filesystem, sampled every 2 s; other processes' writes count too.
df --output=avail -k "$WORK" | tail -n 1 > "$WORK/disk-start.txt"
( while :; do df --output=avail -k "$WORK" | tail -n 1 >> "$WORK/disk-free.txt"; sleep 2; done ) &
echo $! > "$WORK/disk.pid"
disk_peak_gb() { sort -n "$WORK/disk-free.txt" | head -n 1 | awk -v s="$(cat "$WORK/disk-start.txt")" '{ printf "%.0f", (s - $1) / 1048576 }'; }

# ---- private Docker engine ------------------------------------------------------------------------
export DOCKER_HOST=unix://$WORK/docker.sock
export DOCKER_CONFIG=$WORK/docker-config   # not the caller's ~/.docker
export DOCKER_BUILDKIT=1                   # RUN --mount needs BuildKit
echo '{}' > "$WORK/daemon.json"             # not the machine's /etc/docker/daemon.json
started=$SECONDS
dockerd --config-file "$WORK/daemon.json" --host "$DOCKER_HOST" --data-root "$WORK/data" \
  --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" --storage-driver vfs \
  --iptables=false --ip6tables=false --bridge=none >"$WORK/dockerd.log" 2>&1 &
echo $! > "$WORK/dockerd-launch.pid"   # the same process; stopped even if it never wrote its pidfile
wait_for 60 dockerd "$DOCKER" info
say "dockerd $(cat "$WORK/dockerd.pid") ready in $((SECONDS - started)) s (vfs, no bridge, state in $WORK)"

# ---- stand-in base image ------------------------------------------------------------------------
BASE=$(awk 'toupper($1) == "FROM" { print $2; exit }' "$ROOT/Dockerfile")
SUITE=${BASE#*:}; SUITE=${SUITE%%-*}   # debian:bookworm-20250520-slim -> bookworm
[[ $BASE == debian:* && -n $SUITE ]] || fail "expected FROM debian:<suite>-..., found '$BASE'"
started=$SECONDS
# minbase, without documentation and locales, like the official -slim images. ca-certificates and
# python3 are not included: the Dockerfile must install what it needs, as on the real base.
# TMPDIR: mmdebstrap's chroot and its mounts stay inside $WORK, where cleanup finds them.
TMPDIR=$WORK timeout -s KILL 900 mmdebstrap --quiet --variant=minbase \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' --dpkgopt='path-exclude=/usr/share/locale/*' \
  "$SUITE" "$WORK/base.tar" \
  "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY_MIRROR $SUITE-security main" \
  >"$WORK/mmdebstrap.log" 2>&1 || { tail -n 30 "$WORK/mmdebstrap.log" >&2; fail "mmdebstrap"; }
timeout -s KILL 300 "$DOCKER" import --change 'CMD ["bash"]' \
  --message "stand-in for $BASE: mmdebstrap $SUITE from $MIRROR (no registry reachable)" \
  "$WORK/base.tar" "$BASE" >/dev/null
rm -f "$WORK/base.tar"
base_s=$((SECONDS - started))
say "stand-in $BASE built with mmdebstrap in ${base_s} s"

# ---- this machine's PyPI files, over HTTP ----------------------------------------------------------
build_args=()
mkdir -p "$WORK/serve"
indexes=() find_links=()
for dir in $LOCAL_INDEXES; do
  [[ -d $dir/simple ]] || continue
  ln -s "$dir" "$WORK/serve/index-${#indexes[@]}"
  indexes+=("index-${#indexes[@]}")
done
for dir in $LOCAL_WHEELS; do
  [[ -d $dir ]] || continue
  ln -s "$dir" "$WORK/serve/wheels-${#find_links[@]}"
  find_links+=("wheels-${#find_links[@]}")
done
if ((${#indexes[@]} + ${#find_links[@]})); then
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server --bind 127.0.0.1 --directory "$WORK/serve" "$PORT" >"$WORK/http.log" 2>&1 &
  echo $! > "$WORK/http.pid"
  URL=http://127.0.0.1:$PORT
  wait_for 30 "wheel server" python3 -c "import urllib.request; urllib.request.urlopen('$URL/')"
  # PyPI stays the index (the Dockerfile's default); the local copies are extra indexes and
  # find-links, which supply the files they hold: among identical files (same name, same hash) pip's
  # resolver tries the one found last, i.e. the extra index's (seen with pip 23.0.1 and 26.3).
  extra=() links=()
  for name in "${indexes[@]}"; do extra+=("$URL/$name/simple"); done
  for name in "${find_links[@]}"; do links+=("$URL/$name/"); done
  build_args=(--build-arg "PIP_EXTRA_INDEX_URL=${extra[*]}" --build-arg "PIP_FIND_LINKS=${links[*]}"
              --build-arg PIP_TRUSTED_HOST=127.0.0.1)
  say "serving $LOCAL_INDEXES $LOCAL_WHEELS on $URL (pip build args)"
fi

# This machine reaches PyPI through a TLS-intercepting proxy whose CA only the host's bundle holds:
# hand that bundle to the build as a secret (for pip's step only; not stored in the image).
CA_BUNDLE=${PIP_CERT:-/etc/ssl/certs/ca-certificates.crt}
[[ -s $CA_BUNDLE ]] && build_args+=(--secret "id=pip-ca,src=$CA_BUNDLE")

# ---- build ---------------------------------------------------------------------------------------
started=$SECONDS
say "docker build (log: build.log; up to ${BUILD_LIMIT} s)"
if ! timeout -s KILL "$BUILD_LIMIT" "$DOCKER" build --network host --progress plain "${build_args[@]}" \
     -t "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1; then
  tail -n 60 "$WORK/build.log" >&2
  fail "docker build (or it ran past ${BUILD_LIMIT} s)"
fi
build_s=$((SECONDS - started))
size_gb=$("$DOCKER" image inspect -f '{{.Size}}' "$IMAGE" | awk '{ printf "%.1f", $1 / 1e9 }')
from_disk=0
[[ -f $WORK/http.log ]] && from_disk=$(grep -cE '"GET /[^ ]+\.(whl|tar\.gz) HTTP' "$WORK/http.log" || true)
say "image built in ${build_s} s: ${size_gb} GB, $from_disk of the lock's files fetched from the local server"

# ---- what is in the image --------------------------------------------------------------------------
user=$("$DOCKER" image inspect -f '{{.Config.User}}' "$IMAGE")
uid=${user%%:*}
[[ -n $uid && $uid != 0 && $uid != root ]] || fail "the image runs as root (USER '$user')"
[[ $uid =~ ^[0-9]+$ ]] || fail "USER '$user' is not numeric: Kubernetes' runAsNonRoot cannot verify a name"
"$DOCKER" image inspect -f '{{json .Config.Env}}' "$IMAGE" | grep -q '"HDF5_USE_FILE_LOCKING=FALSE"' \
  || fail "HDF5_USE_FILE_LOCKING=FALSE is not set in the image"
for path in $LOCAL_INDEXES $LOCAL_WHEELS "$WORK" "$ROOT/"; do
  if "$DOCKER" history --no-trunc --format '{{.CreatedBy}}' "$IMAGE" | grep -F "$path"; then
    fail "the host path $path is baked into the image's history"
  fi
done
started=$SECONDS
timeout -s KILL 600 "$DOCKER" run --rm --network none --entrypoint sh "$IMAGE" -c \
  'if [ -e /run/secrets/pip-ca ]; then echo "the CA secret is in the image" >&2; exit 1; fi; pip list --format=freeze' \
  >"$WORK/freeze.txt" || fail "pip list in the image"
python3 - "$ROOT/requirements.lock" "$WORK/freeze.txt" <<'EOF' || fail "the image does not hold exactly requirements.lock"
import re
import sys

def pins(path):
    name = lambda n: re.sub(r"[-_.]+", "-", n).lower()
    lines = (l.split("#")[0].strip() for l in open(path))
    return {name(n): v for n, v in (l.split("==", 1) for l in lines if l)}

lock, image = pins(sys.argv[1]), pins(sys.argv[2])
# Besides the lock: the project itself, and the installer (Debian's pip, from python3-venv).
problems = [f"{n} is not installed" for n in ("camfaith", "pip") if image.pop(n, None) is None]
problems += [f"missing {n}=={v}" for n, v in lock.items() if n not in image]
problems += [f"extra {n}=={v}" for n, v in image.items() if n not in lock]
problems += [f"{n}: lock {v}, image {image[n]}" for n, v in lock.items() if n in image and image[n] != v]
print("\n".join(problems) or f"image holds the {len(lock)} pins of requirements.lock, camfaith and pip, nothing else")
sys.exit(1 if problems else 0)
EOF
say "checked the installed set in $((SECONDS - started)) s"

# ---- a clear error for an output folder the image's user cannot write ---------------------------------
mkdir -p "$OUT/denied"   # root's, mode 755: what Docker makes of a missing mount source
if timeout -s KILL 600 "$DOCKER" run --name "$CONTAINER-denied" --rm --network none \
     -v "$OUT/denied:/work/results" "$IMAGE" snakemake -n >"$WORK/denied.log" 2>&1; then
  fail "snakemake started although /work/results was not writable"
fi
grep -q "is not writable by uid $uid" "$WORK/denied.log" || { cat "$WORK/denied.log" >&2; fail "no clear error for an unwritable mount"; }
say "as uid $uid, an unwritable mount is refused with: $(head -n 1 "$WORK/denied.log")"

# ---- the tiny workflow, outputs on the host ---------------------------------------------------------
# As docs/container.md recommends: --user set to the owner of the host folders (here a uid the image
# does not know, so HOME falls back to a scratch folder too); all four output folders mounted.
RUN_UID=4321
mkdir -p "$OUT/results" "$OUT/logs" "$OUT/benchmarks" "$OUT/.snakemake"
chown "$RUN_UID:$RUN_UID" "$OUT/results" "$OUT/logs" "$OUT/benchmarks" "$OUT/.snakemake"
started=$SECONDS
# --replace-workflow-config: the tiny config alone, not merged into the image's config/config.yaml.
say "snakemake --cores 2 --configfile tests/tiny_config.yaml in the container as uid $RUN_UID (up to ${RUN_LIMIT} s)"
if ! timeout -s KILL "$RUN_LIMIT" "$DOCKER" run --name "$CONTAINER" --rm --network none --user "$RUN_UID:$RUN_UID" \
     -v "$OUT/results:/work/results" -v "$OUT/logs:/work/logs" -v "$OUT/benchmarks:/work/benchmarks" \
     -v "$OUT/.snakemake:/work/.snakemake" -v "$ROOT/tests/tiny_config.yaml:/config/tiny_config.yaml:ro" \
     "$IMAGE" snakemake --cores 2 --configfile /config/tiny_config.yaml --replace-workflow-config \
     >"$WORK/run.log" 2>&1; then
  tail -n 60 "$WORK/run.log" >&2
  fail "the workflow in the container (or it ran past ${RUN_LIMIT} s)"
fi
run_s=$((SECONDS - started))

missing=()
for file in results/aggregate/default/tables/{summary.csv,paired_tests.csv,classification.md,aopc.md,max_sensitivity.md,haas.md} \
            results/aggregate/default/figures/{morf_curves,max_sensitivity,accuracy_vs_aopc}.{png,pdf} \
            results/aggregate/default/figures/overlays/synthetic/tinyres.{png,pdf} results/aggregate/verdict.md \
            logs/train/synthetic/tinyres.log; do
  [[ -s $OUT/$file ]] || missing+=("$file")
done
((${#missing[@]} == 0)) || fail "missing on the host: ${missing[*]}"
compgen -G "$OUT/benchmarks/train/*/*.tsv" >/dev/null || fail "no benchmark files on the host"
owner=$(stat -c %u "$OUT/results/aggregate/default/tables/summary.csv")
[[ $owner == "$RUN_UID" ]] || fail "summary.csv belongs to uid $owner, not $RUN_UID"
methods=$(python3 -c 'import csv, sys; print(" ".join(sorted({r["method"] for r in csv.DictReader(open(sys.argv[1]))})))' \
  "$OUT/results/aggregate/default/tables/summary.csv")
# the methods of tests/tiny_config.yaml (tinyres: 5, tinygap: cam and two shared ones), sorted
[[ $methods == "cam gradcam hirescam integrated_gradients random scorecam" ]] || fail "summary.csv has methods '$methods'"
say "workflow ran in ${run_s} s as uid $RUN_UID; tables, figures, logs and benchmarks are on the host"

say "PASSED: base ${base_s} s, build ${build_s} s, run ${run_s} s; total $SECONDS s (image ${size_gb} GB, peak disk use about $(disk_peak_gb) GB)"
