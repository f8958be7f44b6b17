# The xrq image: the CLI, the worker and beat, with a CUDA build of torch (the host needs the NVIDIA
# driver and the NVIDIA Container Toolkit; CUDA itself comes with the torch wheel).
#   docker build -t xrq:latest .
#   docker build --build-arg TORCH=torch==2.13.0 --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu .
FROM python:3.11-slim

ARG TORCH="torch==2.11.0"
ARG TORCH_INDEX="https://download.pytorch.org/whl/cu128"

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    OMP_NUM_THREADS=1 \
    HF_HUB_OFFLINE=1

WORKDIR /app
# Java runs METEOR (pycocoevalcap's jar) for evaluations on the cpu queue; without it METEOR is
# reported as unavailable.
RUN apt-get update && apt-get install -y --no-install-recommends default-jre-headless \
    && rm -rf /var/lib/apt/lists/*
# torch first and on its own layer: it is most of the image and changes least.
RUN pip install "${TORCH}" --index-url "${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY cli ./cli
COPY worker ./worker
COPY model ./model
COPY db ./db
COPY common ./common
COPY web ./web
COPY interop ./interop
COPY data ./data
COPY models/demo ./models/demo
# The flower extra: the compose file's Flower runs this image, with xrq's own Celery app.
RUN pip install ".[flower]" && python -c "import cli.main, worker.app, flower"

# Not root: a worker only needs to read images and models, and write nothing on the host. Beat keeps
# its schedule in /var/lib/xrq (a volume in docker-compose.yml; a new volume takes this owner).
RUN useradd --create-home --uid 1000 xrq && mkdir -p /var/lib/xrq && chown xrq /var/lib/xrq
USER xrq
CMD ["xrq", "worker", "--queues", "gpu", "--device", "cuda"]
