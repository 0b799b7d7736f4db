"""Service configuration, read from environment variables (and an optional `.env`).

Both the API and the worker read the same settings; the local stack writes them to
`.stack/env`, docker-compose sets them per service.
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

MIN_ADMIN_TOKEN_LENGTH = 32
# Secrets published in this repository's files (the first docker-compose.yml had them as
# defaults) and the usual vendor defaults: anyone can read them, so no deployment may
# run with one unless ENVIRONMENT=development.
KNOWN_DEFAULT_SECRETS = frozenset(
    {"change-me-please", "ssd", "postgres", "password", "minioadmin", "changeme", "secret"}
)


class Settings(BaseSettings):
    # hide_input_in_errors: a refused setting must not print the secrets beside it.
    model_config = SettingsConfigDict(
        env_file=".env", extra="ignore", protected_namespaces=(), hide_input_in_errors=True
    )

    # "development" lets a local stack run with published default secrets (with a
    # warning); anything else refuses to start with one (KNOWN_DEFAULT_SECRETS).
    environment: Literal["production", "development"] = "production"

    # --- operations -----------------------------------------------------------------
    # Log lines as JSON objects (one per line, for a log collector) or as plain text;
    # "auto": JSON in production, plain in development (common/logs.py).
    log_format: Literal["auto", "json", "plain"] = "auto"
    # Every process serves /metrics, /health/live and /health/ready on this port, for
    # Prometheus and the probes only (0 = not at all); the API's public port has the
    # health endpoints but never the metrics (common/metrics.py).
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    # How long /health/ready waits for each of PostgreSQL, Redis and S3 before it calls
    # the dependency down (the probe's own timeout must be longer).
    health_check_timeout_seconds: float = Field(default=2.0, gt=0, le=30)

    # --- infrastructure -------------------------------------------------------------
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/ssd_img2img"
    # A pooled connection unused for longer is checked with a `SELECT 1` before use
    # (and replaced if dead); one reused sooner is not: common/db.py.
    database_ping_after_idle_seconds: float = Field(default=1.0, ge=0)
    # Connections each process keeps open, and how many more it may open under a burst
    # (closed again when given back while the kept ones are idle: a new connection is a
    # PostgreSQL process start, milliseconds of CPU). Size the kept ones for the usual
    # concurrency (the API runs up to 40 requests at once); keep (size + overflow) ×
    # processes below PostgreSQL's max_connections.
    database_pool_size: int = Field(default=20, ge=1)
    database_max_overflow: int = Field(default=20, ge=0)
    redis_url: str = "redis://127.0.0.1:6379/0"

    s3_endpoint_url: str | None = None  # None = AWS itself
    # Endpoint written into presigned output URLs; differs from the internal endpoint
    # when the S3 server is reached under another name from outside (compose, k8s).
    s3_public_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_bucket: str = "ssd-img2img"
    s3_access_key_id: str | None = None
    s3_secret_access_key: str | None = None
    output_url_ttl_seconds: int = Field(default=3600, ge=60, le=7 * 24 * 3600)
    # What `output` of a result holds: presigned S3 URLs (anyone holding one can fetch
    # until it expires; S3 serves the bytes), or URLs of the API's own authenticated
    # `GET /v2/requests/{id}/outputs/{index}` (needs the x-api-key; the API streams).
    output_url_mode: Literal["presigned", "api"] = "presigned"
    # Retention (common/retention.py): a finished job's outputs and input are deleted
    # this long after it finished; its row stays, marked expired. 24 h rather than
    # Segmind's 1 h: it covers the default webhook retry schedule (11-23 h). No URL
    # handed out (API or webhook) outlives the objects it points at.
    # Values under a few minutes are for tests only (see the orphan sweep's caveat).
    result_retention_seconds: int = Field(default=24 * 3600, ge=1)
    # How often the CPU worker looks for expired jobs, and for orphaned inputs (objects
    # of submits whose job insert never committed: a bucket listing, so rarer).
    retention_sweep_seconds: float = Field(default=60, gt=0)
    orphan_sweep_seconds: float = Field(default=3600, gt=0)

    # --- API ------------------------------------------------------------------------
    # Base URL clients reach the API at; status/response URLs are built from it. When
    # unset, the request's own base URL is used.
    public_base_url: str | None = None
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=4096 * 4096, ge=64 * 64)
    max_output_side: int = Field(default=1024, ge=64)
    max_prompt_chars: int = Field(default=2000, ge=1)
    # Request bodies above this are refused with 413 before they are read. Unset: derived
    # from MAX_IMAGE_BYTES (see `request_body_limit`).
    max_request_bytes: int | None = Field(default=None, ge=1024)
    # `image` may be an http(s) URL; the fetch (every redirect included) must finish
    # within this many seconds, and its body is limited to MAX_IMAGE_BYTES.
    image_fetch_timeout_seconds: float = Field(default=10, gt=0, le=120)
    # Outbound URLs (input images, webhooks) may point at 127.0.0.0/8 and ::1. Only for
    # local development and tests: in production it would let clients reach services
    # on the API host. Every other private or reserved address is refused regardless.
    allow_loopback_urls: bool = False
    # Bearer token of the operator's /admin API; unset (or empty) = the admin API is off.
    admin_token: SecretStr | None = None
    # Wrong admin tokens a client address may send per minute; past it, its admin calls
    # get 429 (even with the right token) until the minute ends.
    admin_auth_failures_per_minute: int = Field(default=20, ge=1)
    # Per-tenant limits for accounts that have no value of their own (NULL columns).
    # Requests per API key and minute, status polls included: the Segmind SDK polls once a
    # second per job, so 600 leaves room for several jobs in flight per key.
    default_rate_limit_per_minute: int = Field(default=600, ge=1)
    # Open work of one account in each API process (api/open_work.py); past a bound, 429.
    # Image URL fetches at once: each holds a request thread for up to
    # IMAGE_FETCH_TIMEOUT_SECONDS while the URL's server answers (maybe slowly).
    default_max_url_fetches: int = Field(default=4, ge=1)
    # Event streams plus v1 waits open at once (each holds a connection and a little
    # memory, no thread).
    default_max_streams: int = Field(default=32, ge=1)
    # All accounts' image URL fetches at once in one API process: keep it well below
    # the request threads (40), so that a fetch storm never leaves the others waiting.
    max_url_fetches_per_process: int = Field(default=16, ge=1)
    default_max_jobs_in_flight: int = Field(default=16, ge=1)  # QUEUED + PROCESSING
    # v1 (synchronous) requests: how long the call waits for its job before answering
    # 504 with the request id (the job goes on; poll it through v2), and how often one
    # query per API process re-checks all waited-for jobs, in case a Redis
    # notification was lost.
    sync_wait_timeout_seconds: float = Field(default=300, gt=0, le=3600)
    sync_wait_recheck_seconds: float = Field(default=5, gt=0, le=300)
    # Event streams: a `: keepalive` comment after this long without an event, so that
    # proxies (and their idle timeouts, often 30-60 s) keep a quiet stream open.
    events_keepalive_seconds: float = Field(default=15, gt=0, le=300)

    # --- worker ---------------------------------------------------------------------
    model_id: str = "segmind/SSD-1B"
    model_device: Literal["auto", "cpu", "cuda"] = "auto"
    model_variant: str | None = None
    # The pipeline's dtype: auto = bfloat16 on CUDA, float32 on a CPU (worker/pipeline.py
    # resolve_dtype says why); float16 wants VAE_ID set to an fp16-safe VAE.
    model_dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    # A VAE to use instead of the model's own (a hub id or a folder), e.g.
    # madebyollin/sdxl-vae-fp16-fix with MODEL_DTYPE=float16.
    vae_id: str | None = None
    # CPU threads of torch's kernels; 0 = automatic (worker/tuning.py torch_threads).
    torch_threads: int = Field(default=0, ge=0)
    # Output sizes (WIDTHxHEIGHT) the GPU worker warms up for, and compiles for with
    # TORCH_COMPILE; jobs of other sizes run eager (worker/tuning.py).
    shape_buckets: list[str] = Field(default_factory=lambda: ["1024x1024"])
    # A warm-up generation before the worker claims anything: auto = every shape bucket
    # on CUDA, one 64x64 call on a CPU.
    warmup: Literal["auto", "on", "off"] = "auto"
    # torch.compile the UNet for the shape buckets (minutes at the first start; the
    # kernels are cached in TORCHINDUCTOR_CACHE_DIR).
    torch_compile: bool = False
    # The GPU worker pool: an API queues its jobs in this pool, a worker runs only the
    # jobs of its own pool (PostgreSQL `jobs.queue`), and its wake-ups travel on the
    # Redis queue of this name. One pool per kind of GPU, if you have several.
    gpu_queue: str = Field(default="gpu", min_length=1, max_length=64)
    # Dynamic batching (docs/scheduling.md): a worker runs up to this many images of
    # compatible queued jobs in one pipeline call. 1 = no batching.
    max_batch_images: int = Field(default=8, ge=1, le=64)
    # An idle GPU worker looks for queued work in PostgreSQL this often even without a
    # wake-up, so a lost wake-up (Redis flushed or down) costs at most this long.
    worker_poll_seconds: float = Field(default=2.0, gt=0, le=60)
    # The CPU background worker's queue (webhooks, maintenance): never a GPU worker's.
    cpu_queue: str = "cpu"

    # --- webhooks (common/webhooks, docs/webhooks.md) -------------------------------
    # One delivery attempt (DNS, connect, TLS, request, response) must end within this.
    webhook_timeout_seconds: float = Field(default=10, gt=0, le=60)
    # Attempts in flight at once, per account and per endpoint: one tenant's slow or dead
    # receivers hold at most this many of the CPU workers' threads (keep the per-account
    # bound below the worker's --concurrency, 4), and others' webhooks go meanwhile.
    webhook_max_attempts_per_account: int = Field(default=2, ge=1)
    webhook_max_attempts_per_endpoint: int = Field(default=1, ge=1)
    # An endpoint failing this many attempts in a row is not attempted for a while (its
    # deliveries wait, no thread waits on it), then tried again once.
    webhook_pause_after_failures: int = Field(default=3, ge=1)
    webhook_pause_seconds: float = Field(default=60, gt=0)
    # ...and disabled (the account re-enables it) once its run of failures is this long
    # and lasted this long.
    webhook_disable_after_failures: int = Field(default=20, ge=1)
    webhook_disable_after_seconds: float = Field(default=24 * 3600, ge=0)
    # Upper bounds of the waits before each retry (equal jitter: the wait is uniform in
    # [bound/2, bound]); their number is the number of retries. The default's retries
    # span 11-23 hours (17 on average): about a day. JSON list
    # in the environment, e.g. WEBHOOK_RETRY_SCHEDULE_SECONDS='[5, 30, 120]'.
    webhook_retry_schedule_seconds: list[float] = Field(
        default=[5, 30, 120, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600], max_length=50
    )
    # A receiver's Retry-After is honoured up to this many seconds.
    webhook_retry_after_max_seconds: float = Field(default=3600, ge=0)
    # After a secret rotation, the previous secret still signs (a second signature)
    # for this long, so receivers can switch without losing a webhook.
    webhook_secret_overlap_seconds: int = Field(default=24 * 3600, ge=0, le=30 * 24 * 3600)
    # At most one job.progress event per job per this many seconds.
    webhook_progress_interval_seconds: float = Field(default=5, gt=0)
    # The CPU worker's sweep for due deliveries (retries, lost messages): its period,
    # and how long a sent-but-unclaimed delivery waits before it is sent again.
    webhook_sweep_interval_seconds: float = Field(default=5, gt=0)
    webhook_redispatch_after_seconds: float = Field(default=60, gt=0)
    # Output URLs in job.completed payloads: presigned at every attempt, valid this long.
    webhook_output_url_ttl_seconds: int = Field(default=24 * 3600, ge=60, le=7 * 24 * 3600)

    # --- crash safety (docs/reliability.md) ------------------------------------------
    # A worker holds a lease on the job it runs and renews it every third of this; the
    # reconciler takes back a job whose lease expired (its worker died or hung).
    lease_seconds: float = Field(default=60, ge=1)
    # Claims of one job before the reconciler gives up on it (FAILED, refunded): a job
    # that kills its worker every time must not take workers down forever.
    max_attempts: int = Field(default=3, ge=1)
    # How often the CPU worker reconciles PostgreSQL with the queue (common/reconcile.py).
    reconcile_interval_seconds: float = Field(default=30, gt=0)
    # A QUEUED job sent this long ago and still not claimed is sent again (its message
    # may be lost); every re-send doubles the wait, up to 16 times this.
    redispatch_after_seconds: float = Field(default=300, gt=0)
    # Redis (kombu) visibility timeout: an unacknowledged message is delivered again
    # after this, even while its job still runs, so it must exceed the longest job. It
    # is also the longest a job may run: its worker stops renewing the lease then (a
    # hung job is taken back), and a job claimed without a lease counts as leased so long.
    broker_visibility_timeout_seconds: int = Field(default=6 * 3600, ge=1)
    # GPU worker recycling: after this many jobs, or once its RSS exceeds this many MiB,
    # the worker finishes its job and exits cleanly, for its supervisor to restart it.
    # 0 = never.
    worker_max_jobs: int = Field(default=0, ge=0)
    worker_max_rss_mb: int = Field(default=0, ge=0)
    # ...or once the GPU memory torch holds exceeds this (0 = no limit).
    worker_max_gpu_memory_mb: int = Field(default=0, ge=0)

    @field_validator("admin_token")
    @classmethod
    def _admin_token_long_enough(cls, token: SecretStr | None) -> SecretStr | None:
        # A short bearer token can be guessed; refuse to start with one (empty: off).
        value = token.get_secret_value() if token is not None else ""
        if value and len(value) < MIN_ADMIN_TOKEN_LENGTH:
            raise ValueError(
                f"ADMIN_TOKEN must be at least {MIN_ADMIN_TOKEN_LENGTH} characters "
                "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))')"
            )
        return token

    @model_validator(mode="after")
    def _no_default_secrets(self) -> Settings:
        found = self.default_secrets()
        if found and self.environment != "development":
            raise ValueError(
                f"{', '.join(found)}: a published default secret; set your own "
                "(or ENVIRONMENT=development for a local stack)"
            )
        return self

    def default_secrets(self) -> list[str]:
        """The settings holding a published default secret (KNOWN_DEFAULT_SECRETS)."""
        candidates = {
            "DATABASE_URL (password)": _password(self.database_url),
            "S3_SECRET_ACCESS_KEY": self.s3_secret_access_key,
            "ADMIN_TOKEN": self.admin_token.get_secret_value() if self.admin_token else None,
        }
        return [name for name, value in candidates.items() if value in KNOWN_DEFAULT_SECRETS]

    @property
    def lease_renew_seconds(self) -> float:
        """The heartbeat's period: three renewals fit in one lease."""
        return self.lease_seconds / 3

    @property
    def request_body_limit(self) -> int:
        """MAX_REQUEST_BYTES, or room for the largest allowed image as base64 (4/3 of
        its bytes) plus 256 KiB for the prompts, a data: URI prefix and the other fields."""
        if self.max_request_bytes is not None:
            return self.max_request_bytes
        return self.max_image_bytes * 4 // 3 + 256 * 1024


@lru_cache
def get_settings() -> Settings:
    return Settings()


def _password(database_url: str) -> str | None:
    try:
        return make_url(database_url).password
    except ArgumentError:
        return None  # not a URL at all: the database connection will say so


# Below this, results are deleted within minutes of finishing: a test's setting.
_TEST_RETENTION_SECONDS = 300


def unsafe_test_settings(settings: Settings) -> list[str]:
    """The settings in force that exist for tests and local development only, each with
    what it costs in service. Every process logs them loudly at start
    (`warn_test_only`)."""
    found = []
    if settings.allow_loopback_urls:
        found.append(
            "ALLOW_LOOPBACK_URLS=true: image URLs and webhooks may reach services on this host"
        )
    if settings.result_retention_seconds < _TEST_RETENTION_SECONDS:
        found.append(
            f"RESULT_RETENTION_SECONDS={settings.result_retention_seconds}: results are "
            "deleted within minutes of finishing"
        )
    return found


def warn_test_only(settings: Settings, logger: logging.Logger, *extra: str) -> None:
    """Log each test-only setting in force (and `extra` ones of the process) as a warning
    that cannot be missed."""
    for what in [*unsafe_test_settings(settings), *extra]:
        logger.warning("TEST-ONLY SETTING IN FORCE, never in production: %s", what)
