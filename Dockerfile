# syntax=docker/dockerfile:1.7
# Two images from one file:
#   operator  the kopf operator only (no torch):   docker build --target operator -t REGISTRY/polyvivid-operator:0.1.0 .
#   runtime   the workloads on GPUs (CUDA PyTorch): docker build --target runtime  -t REGISTRY/polyvivid:0.1.0 .
# Push both (docker push ...) and point the chart's image settings (or POLYVIVID_IMAGE) at them.
# Base images are pinned to exact versions; override the torch build with
#   --build-arg TORCH_SPEC=torch==2.13.0 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128

ARG PYTHON_IMAGE=python:3.11.7-slim-bookworm

FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1
# the non-root user every pod runs as (runAsUser 1000 in the operator's children and the chart)
RUN groupadd --gid 1000 polyvivid && useradd --uid 1000 --gid 1000 --create-home --shell /usr/sbin/nologin polyvivid
WORKDIR /src
COPY pyproject.toml README.md ./
COPY polyvivid ./polyvivid
COPY operator ./operator

FROM base AS operator
RUN pip install --no-compile . && rm -rf /src
USER 1000:1000
WORKDIR /home/polyvivid
EXPOSE 8080
ENTRYPOINT ["polyvivid-operator"]

FROM base AS runtime
# KubeRay's readiness probe of RayService workers runs `bash -c "wget ... | grep success && ..."` (its exec
# probe for the Serve proxy); the slim base has bash and grep, not wget
RUN apt-get update && apt-get install -y --no-install-recommends wget && rm -rf /var/lib/apt/lists/*
ARG TORCH_SPEC=torch==2.13.0
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu128
# torch first and alone, from the CUDA index; then the project's extras (they must not pull another torch)
RUN pip install --no-compile --index-url "${TORCH_INDEX}" "${TORCH_SPEC}" \
 && pip install --no-compile ".[model,curation,serve]" \
 && rm -rf /src
USER 1000:1000
WORKDIR /home/polyvivid
ENV POLYVIVID_CACHE=/home/polyvivid/.cache/polyvivid
ENTRYPOINT ["polyvivid"]
