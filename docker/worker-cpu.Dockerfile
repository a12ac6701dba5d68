# A CPU worker: the engine (CPU torch) and the bit-packed XNOR/popcount kernels compiled with OpenMP.
# Build from the repository root: docker build -f docker/worker-cpu.Dockerfile -t bbcu-worker-cpu .
ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS build
RUN apt-get update && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY csrc csrc
COPY app app
COPY workers workers
COPY models models
COPY cli cli
COPY bbcu_client bbcu_client
RUN pip wheel --no-cache-dir --no-deps -w /wheels .

FROM ${PYTHON_IMAGE}
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --create-home --uid 10001 bbcu
# the CPU build of torch first, so the engine extra does not pull CUDA wheels
RUN pip install torch==${TORCH_VERSION} --index-url https://download.pytorch.org/whl/cpu
COPY --from=build /wheels /wheels
RUN pip install "$(ls /wheels/*.whl)[engine]" && rm -rf /wheels

USER bbcu
WORKDIR /home/bbcu
ENTRYPOINT ["bbcu"]
CMD ["worker", "--queues", "cpu"]
