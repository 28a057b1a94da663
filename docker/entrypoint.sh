#!/bin/sh
# Entry point of the camfaith image (Dockerfile): fail early, with the fix, when Snakemake could not
# write its outputs, then run the command unchanged.
#
# Outputs usually go to bind mounts (-v "$PWD/results:/work/results" ...). A folder that Docker
# creates for a missing mount source belongs to root, and a folder of the host user belongs to that
# uid; the image's user (1000) can write to neither, and Snakemake would stop deep inside the first
# job with a bare "Permission denied".
set -eu

# Under `docker run --user <uid>` with a uid the image does not know, HOME is / and not writable
# (matplotlib, torch and Snakemake keep caches under HOME), and there is no user name, which makes
# Python's getpass.getuser() raise (Snakemake calls it for every run); it reads LOGNAME first.
if [ ! -w "${HOME:-/}" ]; then
  HOME=/tmp/camfaith-home
  export HOME
  mkdir -p "$HOME"
fi
if ! id -un >/dev/null 2>&1; then
  LOGNAME="uid$(id -u)"
  USER=$LOGNAME
  export LOGNAME USER
fi

if [ "${1:-}" = snakemake ]; then
  for dir in results logs benchmarks .snakemake; do
    path="/work/$dir"
    if [ -e "$path" ] && [ ! -w "$path" ]; then
      owner=$(stat -c %u:%g "$path")
      echo "camfaith: $path is not writable by uid $(id -u) (it belongs to $owner)." >&2
      echo "  Run as its owner:   docker run --user $owner ..." >&2
      echo "  or let uid $(id -u) write to the host folder (chown/chmod), then start again." >&2
      exit 1
    fi
    if [ ! -e "$path" ] && [ ! -w /work ]; then
      echo "camfaith: uid $(id -u) cannot create $path: mount a writable folder there" >&2
      echo "  (-v \"\$PWD/$dir:$path\") or run as the image's user (uid 1000)." >&2
      exit 1
    fi
  done
fi

exec "$@"
