"""The service settings: one pydantic-settings class read from ``BBCU_*`` environment variables.

It lives in ``workers`` (the lower room) because the API and the workers both read it.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.catalog import WEIGHTS_DIR
from models.vocab import BACKENDS, DEFAULT_TILE_MEMORY_MB, PRECISIONS
from workers.callback_urls import allow_list


class Settings(BaseSettings):
    """Every knob of the service; the README's settings table lists the same fields."""

    model_config = SettingsConfigDict(env_prefix="BBCU_", extra="ignore")

    broker_url: str | None = Field(
        default=None, description="Redis URL (broker, result backend and blob store); unset: embedded mode")
    weights_dir: Path = Field(
        default=WEIGHTS_DIR, description="Directory of *.safetensors model files")
    max_upload_bytes: int = Field(
        default=64 << 20, gt=0, description="Largest accepted request body")
    max_pixels: int = Field(
        default=4096 * 4096, gt=0, description="Largest accepted input (width x height): a 12 MP photo fits")
    max_output_pixels: int = Field(
        default=4096 * 4096, gt=0, description="Largest output (limits the input of sr by its scale)")
    max_job_gops: float = Field(
        default=1500.0, gt=0,
        description="Largest estimated work of one job in giga-operations (every stage's operations per "
                    "pixel times the input pixels); more is refused with 413. 1500: x4 SR of 1 MP fits")
    max_frames: int = Field(
        default=1000, gt=0,
        description="Most frames of an animation or a video in one job (max_job_gops bounds their work too)")
    chunk_frames: int = Field(
        default=8, gt=0,
        description="Celery mode: a video or an animation of more frames is split into chunks of this "
                    "many frames that any worker can take")
    max_queued_jobs: int = Field(
        default=500, gt=0,
        description="Jobs accepted and not finished (queued or running) before new ones get 503 "
                    "(Celery mode; the embedded pool has embedded_queue)")
    max_queued_bytes: int = Field(
        default=1 << 30, gt=0,
        description="Input bytes those jobs may hold in Redis before new ones get 503 (Celery mode); "
                    "keep it well under Redis's maxmemory")
    max_stored_bytes: int = Field(
        default=3 << 29, gt=0,
        description="Input, result (held or reserved) and job record bytes in Redis before new jobs get "
                    "503 (Celery mode); lowered to 60% of Redis's maxmemory when that is less; one API "
                    "key's jobs may hold half")
    result_ttl_s: int = Field(
        default=3600, gt=0, description="How long inputs and results are kept")
    job_ttl_s: int = Field(
        default=86400, gt=0, description="How long job records are kept (410 once results expire)")
    sync_wait_s: float = Field(
        default=330.0, ge=0,
        description="A synchronous request waits this long for its job, then answers 504 (the job goes on)")
    soft_time_limit_s: int = Field(
        default=300, gt=0, description="A job running longer fails (time limit)")
    hard_time_limit_s: int = Field(
        default=360, gt=0, description="A worker process running a job longer is replaced")
    backend: str = Field(
        default="auto", description="Engine backend: " + ", ".join(BACKENDS))
    precision: str = Field(
        default="fp32", description="Float layers' arithmetic on CPU workers: fp32 (exact) or bf16 (faster, "
        "opt-in, on CPUs with bf16 instructions; docs/engine.md gives its PSNR change)")
    tile_memory_mb: int = Field(
        default=DEFAULT_TILE_MEMORY_MB, gt=0,
        description="Activation memory per tile on the CPU (sets the tile size)")
    gpu_tile_memory_mb: int = Field(
        default=4096, gt=0,
        description="Activation memory per tile batch on a GPU (a 1080p denoise needs about 3200)")
    gpu_worker_threads: int = Field(
        default=3, gt=0,
        description="Jobs a GPU worker runs at once: decoding and encoding overlap the GPU work")
    gpu_release_pixels: int = Field(
        default=1024 * 1024, gt=0, description="Free cached GPU memory after jobs with more input pixels")
    torch_threads: int = Field(
        default=0, ge=0, description="Intra-op threads per worker process; 0: torch default")
    api_threads: int = Field(
        default=128, gt=0, description="API threads (a synchronous request holds one while waiting)")
    embedded_workers: int = Field(
        default=2, gt=0, description="Threads of the embedded pool")
    embedded_queue: int = Field(
        default=64, gt=0, description="Jobs waiting in the embedded pool before 503")
    memory_store_max_bytes: int = Field(
        default=1 << 30, gt=0,
        description="Embedded mode: bytes of inputs and results held; past it the oldest results are "
                    "dropped (410), then new jobs get 503")
    required_queues: str = Field(
        default="cpu", description="Comma list of queues /readyz needs a live worker for")
    heartbeat_s: float = Field(
        default=5.0, gt=0, description="Worker heartbeat period (expires after 3 periods)")
    retry_after_s: int = Field(
        default=5, gt=0, description="Retry-After sent with 503 answers")
    redis_timeout_s: float = Field(
        default=3.0, gt=0, description="Socket timeout of Redis connections")
    store_retry_s: float = Field(
        default=30.0, ge=0,
        description="A worker retries a Redis command this long (a restart) before it gives the job up "
                    "to recovery")
    http_limit_concurrency: int = Field(
        default=0, ge=0,
        description="Open connections and tasks before uvicorn answers 503; 0: as many as the open-file "
                    "limit (raised to the hard limit at start) leaves room for, at most 4096")
    http_backlog: int = Field(
        default=4096, gt=0,
        description="Pending TCP connections the listening socket queues (less when open files are few; "
                    "the kernel caps it at net.core.somaxconn)")
    http_keep_alive_s: float = Field(
        default=30.0, gt=0, description="Idle keep-alive connections close after this long")
    http_header_timeout_s: float = Field(
        default=10.0, gt=0, description="A connection that has not sent a full request head is closed")
    http_body_timeout_s: float = Field(
        default=60.0, gt=0, description="An upload not complete after this long gets 408")
    api_keys: str = Field(
        default="", description="Comma list of API key digests (sha256:<hex>, or name=sha256:<hex>; "
                                "`bbcu key new` makes one); with this or api_keys_file set, keys are "
                                "required")
    api_keys_file: Path | None = Field(
        default=None, description="File of API key digests, one per line: sha256:<hex> [name]; # comments")
    metrics_key: str = Field(
        default="", description="Digest (sha256:<hex>, `bbcu key new`) of the operator key /metrics needs; "
                                "unset: /metrics is open while API keys are off, closed (403) while on")
    rate_limit_per_min: float = Field(
        default=600.0, ge=0, description="Requests per minute per API key (a token bucket); 0: no limit")
    rate_limit_burst: int = Field(
        default=60, gt=0, description="Requests an API key may send at once before the rate applies")
    max_active_jobs: int = Field(
        default=16, ge=0, description="Queued and running jobs per API key; past it 429; 0: no limit")
    max_event_streams: int = Field(
        default=16, ge=0, description="Open /jobs/{id}/events streams per API key; past it 429; 0: no limit")
    anonymous_limits: bool = Field(
        default=False, description="With no API keys configured, apply the rate and job limits per client "
                                   "address (off: an open service is not limited)")
    cors_origins: str = Field(
        default="", description="Comma list of origins whose pages may call the API (CORS); empty: off")
    webhook_secret: SecretStr | None = Field(
        default=None, description="HMAC-SHA256 key signing webhook bodies; unset: callback_url refused")
    webhook_hosts: str = Field(
        default="", description="Comma list of callback hosts (name, *.domain, IP or CIDR, each with an "
                                "optional :port that then allows that port only); empty: public "
                                "addresses only")
    webhook_attempts: int = Field(
        default=5, gt=0, description="Deliveries tried per webhook event before giving up")
    webhook_backoff_s: float = Field(
        default=1.0, gt=0, description="Wait before the first webhook retry, doubled after each")
    webhook_timeout_s: float = Field(
        default=5.0, gt=0, description="Time a webhook receiver has to answer one delivery")
    webhook_workers: int = Field(
        default=8, gt=0, description="Threads per process that send webhooks")
    webhook_lane_concurrency: int = Field(
        default=2, gt=0,
        description="Webhooks of one tenant (key, or receiver host when keys are off) in flight at once "
                    "per process: a receiver that never answers holds this many threads, no more")

    @field_validator("webhook_secret", mode="before")
    @classmethod
    def _empty_secret_is_unset(cls, value: object) -> object:
        return None if value == "" else value  # `BBCU_WEBHOOK_SECRET=` (e.g. from compose) means unset

    @field_validator("webhook_hosts")
    @classmethod
    def _allow_list_parses(cls, value: str) -> str:
        allow_list(_items(value))  # a malformed entry stops the start, not the first delivery
        return value

    @model_validator(mode="after")
    def _limits_ordered(self) -> Settings:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} unknown; choose from {', '.join(BACKENDS)}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r} unknown; choose from {', '.join(PRECISIONS)}")
        if self.hard_time_limit_s <= self.soft_time_limit_s:
            raise ValueError("hard_time_limit_s must exceed soft_time_limit_s")
        if self.job_ttl_s < self.result_ttl_s:
            raise ValueError("job_ttl_s must be at least result_ttl_s")
        if self.max_stored_bytes < self.max_queued_bytes:
            raise ValueError("max_stored_bytes must be at least max_queued_bytes (inputs count in both)")
        if self.max_queued_bytes < self.max_upload_bytes:
            raise ValueError("max_queued_bytes must be at least max_upload_bytes (else a large upload "
                             "could never be accepted)")
        return self

    @property
    def embedded(self) -> bool:
        return not self.broker_url

    @property
    def visibility_timeout_s(self) -> int:
        """Above the hard limit, so Redis never redelivers a job that is still running."""
        return self.hard_time_limit_s * 2 + 60

    @property
    def required_queue_list(self) -> list[str]:
        return _items(self.required_queues)

    @property
    def redis_max_connections(self) -> int:
        """Every API thread may hold one connection in a blocking wait; the rest serve everyone else."""
        return self.api_threads + 32

    @property
    def cors_origin_list(self) -> list[str]:
        return _items(self.cors_origins)

    @property
    def webhook_host_list(self) -> list[str]:
        return _items(self.webhook_hosts)


def _items(comma_list: str) -> list[str]:
    return [item.strip() for item in comma_list.split(",") if item.strip()]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The settings from the environment, read once per process."""
    return Settings()
