# camfaith: the pinned pipeline in a CUDA-capable image (docs/container.md).
#
#   docker build -t camfaith .
#   mkdir -p results logs benchmarks .snakemake
#   docker run --gpus all --user "$(id -u):$(id -g)" -v "$PWD/results:/work/results" \
#     -v "$PWD/logs:/work/logs" -v "$PWD/benchmarks:/work/benchmarks" -v "$PWD/.snakemake:/work/.snakemake" \
#     camfaith snakemake --cores all
#
# Needs BuildKit (the default builder since Docker 23; DOCKER_BUILDKIT=1 on Docker 20.10) for
# `RUN --mount`, which keeps the lock file and the sources out of the image's layers.
#
# Base: plain Debian bookworm, not nvidia/cuda. PyTorch's Linux wheels depend on the nvidia-* wheels
# pinned in requirements.lock (cuBLAS, cuDNN, NCCL, the CUDA runtime ...), which carry CUDA's whole
# user-space; the only thing the image lacks is the driver, and the NVIDIA container toolkit mounts the
# host's driver libraries at `docker run --gpus`. A CUDA base image would add a second, unused CUDA
# (gigabytes) whose version could disagree with torch's. Bookworm's python3 is CPython 3.11, the one
# version camfaith supports, so no third-party Python build is needed either. The tag is a dated
# release of the slim variant (never `latest` or a moving `bookworm`), so a rebuild starts from the
# same files; pin the digest too (debian:bookworm-20250520-slim@sha256:...) once you have pulled it.
FROM debian:bookworm-20250520-slim

LABEL org.opencontainers.image.title="camfaith" \
      org.opencontainers.image.description="Grad-CAM family attribution maps scored with AOPC, Max-Sensitivity and HAAS in a Snakemake pipeline" \
      org.opencontainers.image.licenses="MIT"

# Where pip finds packages at build time. The defaults are PyPI's; a mirror or local wheel server can
# be passed with --build-arg (ci/image_test.sh serves this machine's wheel cache on 127.0.0.1 this
# way). --require-hashes makes the source irrelevant to what gets installed: any file whose sha256
# differs from requirements-hashed.lock's is refused. Build args end up in the image history: pass
# no credentials here (use a BuildKit secret for an authenticated index).
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=
ARG PIP_FIND_LINKS=
ARG PIP_TRUSTED_HOST=

# HDF5_USE_FILE_LOCKING=FALSE: results/ is usually a bind mount or a network filesystem, where
# HDF5's fcntl locks fail or hang. NVIDIA_DRIVER_CAPABILITIES: the toolkit mounts only what torch
# needs (compute: libcuda; utility: nvidia-smi). The venv comes first on PATH, so `snakemake`,
# `python` and `pip` are the pinned ones.
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HDF5_USE_FILE_LOCKING=FALSE \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

# Debian's Python and venv: bookworm fixes the minor version (3.11); apt versions are not pinned
# (.hadolint.yaml says why: security updates are wanted, and Debian keeps no old versions to pin to).
# ca-certificates: HTTPS for pip and for dataset downloads. A venv, not the system site-packages:
# bookworm's Python is externally managed (PEP 668), and the venv keeps Debian's python3 modules and
# the lock's apart. /work is the Snakemake working directory, owned by the unprivileged user so that
# outputs that are not mounted can still be written.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      python3 \
      python3-venv \
      ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv \
 && useradd --uid 1000 --user-group --create-home --shell /bin/bash camfaith \
 && install -d -o camfaith -g camfaith /work
# Here rather than at the end: under BuildKit WORKDIR is a layer of its own, which after the 6 GB
# layer would cost a full copy on storage drivers without copy-on-write (vfs).
WORKDIR /work

# The pinned set, exactly: every requirement carries the sha256 of its file (--require-hashes) and
# nothing outside the file is pulled in (--no-deps). This is the big layer (about 6 GB: torch and
# the CUDA wheels), placed before the sources so that code changes reuse it. Two steps because the
# one sdist in the lock (connection_pool) is built into a wheel (--use-pep517) with the lock's own
# setuptools, installed first, instead of an unpinned setuptools fetched into pip's isolated build
# environment.
# Behind a TLS-intercepting proxy pip needs the proxy's CA: pass a full CA bundle as a BuildKit
# secret (docker build --secret id=pip-ca,src=/etc/ssl/certs/ca-certificates.crt ...). It is mounted
# for this step only, never stored in a layer; without the secret pip uses its own CA bundle.
RUN --mount=type=bind,source=requirements-hashed.lock,target=/tmp/lock/requirements-hashed.lock \
    --mount=type=secret,id=pip-ca \
    if [ -s /run/secrets/pip-ca ]; then export PIP_CERT=/run/secrets/pip-ca; fi \
 && grep '^setuptools==' /tmp/lock/requirements-hashed.lock > /tmp/setuptools.txt \
 && pip install --no-cache-dir --require-hashes --no-deps -r /tmp/setuptools.txt \
 && pip install --no-cache-dir --require-hashes --no-deps --no-build-isolation --use-pep517 \
      -r /tmp/lock/requirements-hashed.lock \
 && rm /tmp/setuptools.txt \
 && pip check

# camfaith itself (no dependencies: they are all above; no index: nothing may be fetched) and the
# workflow it runs, copied into the working directory. Owned by root, so the pipeline cannot modify
# its own code. The build context is an allowlist (.dockerignore).
RUN --mount=type=bind,target=/tmp/src,rw \
    pip install --no-cache-dir --no-deps --no-build-isolation --use-pep517 --no-index /tmp/src \
 && cp -r /tmp/src/Snakefile /tmp/src/rules /tmp/src/config /tmp/src/workflow /tmp/src/profiles \
      /tmp/src/report /tmp/src/envs /work/ \
 && install -m 0755 /tmp/src/docker/entrypoint.sh /usr/local/bin/camfaith-entrypoint

# Numeric, so that Kubernetes' runAsNonRoot can verify it; `docker run --user` overrides it.
USER 1000:1000
# The entry point checks that the output folders are writable and names the fix when they are not.
ENTRYPOINT ["camfaith-entrypoint"]
CMD ["snakemake", "--cores", "all"]
