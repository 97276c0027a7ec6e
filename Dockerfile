# The Forgeflow engine image: what KubernetesPodOperator pods run (`python -m <engine> <spec-uri>`), and
# a base for an Airflow image (add apache-airflow's entrypoint, mount dags/).
#
#   docker build -t forgeflow:latest .                                  # CPU torch (as in the lock)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 -t forgeflow:cuda .
#
# Serving pods use the vLLM image of the accelerator instead (see serving/); the lock here stays CPU-only.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HF_HUB_OFFLINE=1 \
    TOKENIZERS_PARALLELISM=false \
    FORGEFLOW_HOME=/var/lib/forgeflow

# Java for Spark; git so engines can record the code version; tini reaps engine children.
RUN apt-get update \
 && apt-get install -y --no-install-recommends openjdk-17-jre-headless git tini procps \
 && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 forgeflow && mkdir -p /var/lib/forgeflow && chown forgeflow /var/lib/forgeflow
WORKDIR /opt/forgeflow

COPY requirements.txt requirements-deepspeed.txt ./
RUN pip install --no-cache-dir uv \
 && uv pip install --system --no-cache -r requirements.txt --extra-index-url "$TORCH_INDEX" \
      --index-strategy unsafe-best-match \
 && DS_BUILD_OPS=0 uv pip install --system --no-cache --no-build-isolation --no-deps -r requirements-deepspeed.txt
# DeepSpeed JIT-builds any op it needs (e.g. cpu_adam for offload) here, in the pod's state volume.
ENV TORCH_EXTENSIONS_DIR=/var/lib/forgeflow/torch_extensions

COPY pyproject.toml README.md ./
COPY tasks ./tasks
COPY spark_ops ./spark_ops
COPY trainers ./trainers
COPY serving ./serving
COPY include ./include
COPY dags ./dags
COPY plugins ./plugins
RUN uv pip install --system --no-cache --no-deps .

USER forgeflow
ENTRYPOINT ["tini", "--"]
CMD ["python", "-m", "tasks.cli", "--help"]
