# The HTTP API: FastAPI + Celery client + Pillow. No torch: jobs run in the worker images.
# Build from the repository root: docker build -f docker/api.Dockerfile -t bbcu-api .
FROM python:3.11-slim

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
# without the engine extra: no torch; the optional C extension is skipped (no compiler here)
RUN pip install . && rm -rf /src

USER bbcu
WORKDIR /home/bbcu
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=3)"]
ENTRYPOINT ["bbcu"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
