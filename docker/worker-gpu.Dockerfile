# GPU worker image: the `sdpo worker` job runner with torch 2.13.0 (CUDA) and the `gpu` extra (vllm==0.32.0).
#
#   docker build -f docker/worker-gpu.Dockerfile -t sdpo-worker-gpu .
#
# The worker runs as the unprivileged user `sdpo` (uid 1000, like docker/Dockerfile) and never executes
# model-written code itself: that runs in the separate sandbox service (root with CAP_SYS_ADMIN for its
# namespaces, no network, no GPU; docs/sandbox.md), reached over the unix socket named by SDPO_SANDBOX_SOCKET
# on a shared volume. A complete `docker run` recipe (sandbox + one worker per GPU) is in docs/gpus.md;
# docs/deploy.md describes the whole service (compose, PostgreSQL, Redis).
#
# Why these pieces:
# * vllm 0.32.0 pins torch==2.13.0 and depends on CUDA 13 wheels (nvidia-cutlass-dsl[cu13]); PyPI's
#   Linux torch 2.13.0 wheel is the CUDA build vllm was compiled against, and it brings its own CUDA runtime
#   libraries. The host only needs an NVIDIA driver new enough for CUDA 13 and the NVIDIA Container Toolkit.
# * The CUDA 13.0 *devel* base (not runtime): Triton and FlashInfer compile kernels at first use and need a C
#   compiler and nvcc inside the container.
# * Ubuntu 24.04's python3 is 3.12, inside the project's range (>=3.11,<3.13).
ARG CUDA_IMAGE=nvidia/cuda:13.0.1-devel-ubuntu24.04
FROM ${CUDA_IMAGE}

ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev build-essential git ca-certificates tini \
    && rm -rf /var/lib/apt/lists/*

# uid 1000 for `sdpo`, as in docker/Dockerfile (so both images can share the data volume). Ubuntu 24.04 images
# ship a user `ubuntu` with that uid: remove it first. /data is created owned by `sdpo`, so a named volume
# mounted there starts writable; a host directory mounted there must be writable by uid 1000.
RUN (userdel --remove ubuntu 2>/dev/null || true) \
    && useradd --create-home --uid 1000 --shell /bin/bash sdpo \
    && mkdir -p /data \
    && chown sdpo:sdpo /data

# A venv keeps pip away from the distribution's Python (PEP 668 marks it externally managed).
RUN python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
RUN pip install --upgrade pip setuptools wheel

# torch first and pinned, so nothing below can resolve a different build.
RUN pip install torch==2.13.0

WORKDIR /app
# Dependencies change less often than code: install them from pyproject.toml first for layer caching.
COPY pyproject.toml README.md ./
RUN mkdir -p sdpo backend workers app \
    && touch sdpo/__init__.py backend/__init__.py workers/__init__.py app/__init__.py \
    && pip install '.[gpu]' \
    && python -c "import importlib.metadata as m; v = m.version; assert v('torch').startswith('2.13.0') and v('vllm') == '0.32.0', (v('torch'), v('vllm'))" \
    && pip uninstall -y sdpo-studio

COPY sdpo ./sdpo
COPY sdpo_sandbox ./sdpo_sandbox
COPY backend ./backend
COPY workers ./workers
COPY app ./app
COPY migrations ./migrations
COPY alembic.ini ./
RUN pip install --no-deps .

# No model hub: models are local checkpoints under SDPO_DATA_DIR or mounted volumes. The trainer initialises
# CUDA before the vLLM engine starts, so vLLM's engine process must be spawned, not forked. Kernel caches
# (Triton's ~/.triton, FlashInfer's and vLLM's ~/.cache) live in /home/sdpo, writable by `sdpo`.
ENV SDPO_DATA_DIR=/data \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    VLLM_WORKER_MULTIPROC_METHOD=spawn \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1
VOLUME ["/data"]
USER sdpo

# tini reaps the vLLM engine processes and forwards SIGTERM so Celery can requeue (acks_late) on shutdown.
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["sdpo", "worker"]
