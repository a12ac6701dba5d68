# A GPU worker on a CUDA PyTorch base. It runs a solo (or threads) pool: CUDA is initialized in the
# process that runs the jobs and never before a fork.
# Build from the repository root: docker build -f docker/worker-gpu.Dockerfile -t bbcu-worker-gpu .
ARG BASE_IMAGE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN useradd --create-home --uid 10001 bbcu

WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY csrc csrc
COPY app app
COPY workers workers
COPY models models
COPY cli cli
COPY bbcu_client bbcu_client
# the base image's torch satisfies the engine extra; the CPU-only C kernels are not needed here
RUN pip install ".[engine]" && rm -rf /src

USER bbcu
WORKDIR /home/bbcu
ENTRYPOINT ["bbcu"]
CMD ["worker", "--queues", "gpu", "--pool", "solo"]
