# Two images: `server` (the default, last stage), the translation server and its client with torch, the project
# and the shipped model; `web` (--target web), the HTTP gateway and page, the client distribution alone (no torch).
#
#   docker compose up --build          # public base image; packages from PyPI, torch from the PyTorch CPU index
#   make compose-test                  # offline: a local base image and the wheels in docker/wheels/
#
# Build arg WHEELS_ONLY=1 installs every package from docker/wheels/ (scripts/compose_test.sh downloads them there
# on the host; the folder is gitignored) with --no-index: the build then needs no network, which containers do not
# have on the project's machines. Unset, pip uses the indexes.
ARG BASE_IMAGE=python:3.11-slim

# ---- base: what both images share ---------------------------------------------------------------------------------
# A virtual environment: Debian's own python3 (the local base image) refuses system-wide pip installs (PEP 668).
# The services run as an unprivileged user.
FROM ${BASE_IMAGE} AS base
RUN python3 -m venv /opt/venv && useradd --create-home --uid 10001 app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# ---- web: `pip install ./client[web]`, which builds the gRPC stubs from proto/ (client/stubs_build.py) ----------
FROM base AS web
ARG WHEELS_ONLY=
COPY proto ./proto
COPY client ./client
RUN --mount=type=bind,source=docker/wheels,target=/wheels \
    if [ "$WHEELS_ONLY" = 1 ]; then from="--no-index --find-links /wheels"; else from=""; fi; \
    pip install $from "./client[web]" && rm -rf /app/client/build
USER app
# Every flag is also an environment variable SEQ2SEQ_WEB_<FLAG> (seq2seq-web --help)
ENV SEQ2SEQ_WEB_HOST=0.0.0.0 \
    SEQ2SEQ_WEB_PORT=8080 \
    SEQ2SEQ_WEB_SERVER=dns:///server:50051
EXPOSE 8080
CMD ["seq2seq-web"]

# ---- server -----------------------------------------------------------------------------------------------------
FROM base AS server

# PyPI's torch for Linux is the CUDA build (several GB with its nvidia-* packages), so the CPU image takes torch
# from the PyTorch CPU wheel index, the default below (the one index URL this project writes down). Empty means
# pip's default index (PyPI): the GPU variant (docker-compose.gpu.yml) sets it empty.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG WHEELS_ONLY=

# 1. torch first and pinned, in its own layer: the largest part, and the one that changes least.
RUN --mount=type=bind,source=docker/wheels,target=/wheels \
    if [ "$WHEELS_ONLY" = 1 ]; then from="--no-index --find-links /wheels"; \
    else from="${TORCH_INDEX_URL:+--index-url $TORCH_INDEX_URL}"; fi; \
    pip install $from torch==2.13.0

# 2. The other dependencies (build system, base and `serve` extra), read from pyproject.toml alone, so that a
#    change of the code does not reinstall them.
COPY pyproject.toml setup.py README.md ./
RUN --mount=type=bind,source=docker/wheels,target=/wheels \
    if [ "$WHEELS_ONLY" = 1 ]; then from="--no-index --find-links /wheels"; else from=""; fi; \
    python3 -c 'import tomllib; t = tomllib.load(open("pyproject.toml", "rb")); \
print(*t["build-system"]["requires"], *t["project"]["dependencies"], \
*t["project"]["optional-dependencies"]["serve"], sep="\n")' >/tmp/requirements.txt && \
    pip install $from -r /tmp/requirements.txt && rm /tmp/requirements.txt

# 3. The code and the project itself, installed editable with what step 2 installed (the install generates the
#    gRPC stubs from proto/, client/stubs_build.py): the code stays in /app, where seq2seq.checkpoint.default_model()
#    looks for models/. The [s] lets the image build before a model is shipped (then set SEQ2SEQ_MODEL and mount one).
COPY proto ./proto
COPY seq2seq ./seq2seq
COPY server ./server
COPY client ./client
COPY model[s] ./models
RUN pip install --no-deps --no-build-isolation -e .

USER app
# Every server flag is also an environment variable; these listen on all interfaces of the container.
ENV SEQ2SEQ_HOST=0.0.0.0 \
    SEQ2SEQ_PORT=50051 \
    SEQ2SEQ_METRICS_PORT=9090
EXPOSE 50051 9090
CMD ["seq2seq-serve"]
