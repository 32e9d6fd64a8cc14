# The training image. Locally:  docker run --gpus all IMAGE run --run-dir /runs/x --data /data/pairs.csv
# Under SageMaker (which runs `IMAGE train`; its SDK's local mode runs IMAGE with no arguments): the
# container contract of infra/container.py. `IMAGE serve --model RUN_DIR` is `rag-eval serve`.
#
# BASE_IMAGE is a CUDA-enabled PyTorch image by default. Any image with Python >= 3.10 and
# python3-venv works, a CPU one too: then name a torch to install with TORCH_SPEC, e.g.
#   docker build --build-arg BASE_IMAGE=python:3.11-slim \
#     --build-arg TORCH_SPEC="torch==2.7.1 --index-url https://download.pytorch.org/whl/cpu" .
# docker/local/ may hold wheels (pip --find-links) and a CA bundle for pip (PIP_CERT=/tmp/local/NAME;
# pip reads the PIP_CERT build argument from the environment and ignores it when empty).
ARG BASE_IMAGE=pytorch/pytorch:2.7.1-cuda12.8-cudnn9-runtime

# --- build: a virtual environment with the job and its dependencies -----------------------------
FROM ${BASE_IMAGE} AS build
SHELL ["/bin/sh", "-eu", "-c"]
ARG TORCH_SPEC=""
ARG EXTRAS=""
ARG PIP_CERT=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
# --system-site-packages: the base image's torch (with its CUDA libraries) is used as it is.
RUN python3 -m venv --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY docker/local/ /tmp/local/
# hadolint ignore=DL3013
RUN if [ -n "$TORCH_SPEC" ]; then \
        pip install --no-cache-dir --find-links /tmp/local $TORCH_SPEC; \
    fi
# The locked versions (requirements/image.lock: the rag, serve, synth and export extras, each file checked against
# its SHA-256); torch is already there, so pip keeps it. EXTRAS adds more extras, held to the tested
# versions by requirements/constraints.txt.
COPY requirements/ /src/requirements/
RUN pip install --no-cache-dir --require-hashes -r /src/requirements/image.lock
COPY pyproject.toml README.md /src/
COPY job/ /src/job/
COPY infra/ /src/infra/
COPY rag_eval/ /src/rag_eval/
RUN pip install --no-cache-dir --no-deps /src \
    && if [ -n "$EXTRAS" ]; then \
        pip install --no-cache-dir --find-links /tmp/local -c /src/requirements/constraints.txt "/src[$EXTRAS]"; \
    fi \
    && python -c "import torch, sentence_transformers, chromadb, openai, onnx, onnxruntime, infra.container.entry, rag_eval.cli"

# --- runtime: the environment, the job's user, the entrypoint -------------------------------------
FROM ${BASE_IMAGE}
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HOME=/tmp/huggingface \
    MPLCONFIGDIR=/tmp/matplotlib \
    MPLBACKEND=Agg
COPY --from=build /opt/venv /opt/venv
COPY docker/entrypoint.sh /usr/local/bin/entrypoint
# SageMaker mounts its own folders at /opt/ml; these only make a plain `docker run` work too.
# setpriv (util-linux, in every Debian/Ubuntu base) is how the entrypoint drops root.
RUN useradd --create-home --uid 1000 --shell /usr/sbin/nologin job \
    && mkdir -p /opt/ml/input/data /opt/ml/input/config /opt/ml/model /opt/ml/output/data /opt/ml/checkpoints \
    && chown -R job /opt/ml \
    && chmod 0755 /usr/local/bin/entrypoint \
    && command -v setpriv
WORKDIR /home/job
# The container starts as root ON PURPOSE, and only the entrypoint script runs as root: SageMaker
# (and Docker, for the SDK's local mode) mounts /opt/ml/model, /opt/ml/output and
# /opt/ml/checkpoints root-owned, so the script hands them to the job's user (uid 1000, or the
# owner of a mounted output folder), then drops root with setpriv before any Python starts.
# `docker run --user UID:GID` skips that step and runs the job as that user directly.
# hadolint ignore=DL3002
USER 0
# No CMD: with no arguments the entrypoint trains under SageMaker's layout (its SDK's local mode
# passes none) and shows the job's help elsewhere.
ENTRYPOINT ["/usr/local/bin/entrypoint", "python", "-m", "infra.container"]
