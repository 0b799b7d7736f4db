"""Service configuration, read from environment variables (and an optional `.env`).

Both the API and the worker read the same settings; the local stack writes them to
`.stack/env`, docker-compose sets them per service.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", protected_namespaces=())

    # --- infrastructure -------------------------------------------------------------
    database_url: str = "postgresql+psycopg://postgres@127.0.0.1:5432/ssd_img2img"
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

    # --- API ------------------------------------------------------------------------
    # Base URL clients reach the API at; status/response URLs are built from it. When
    # unset, the request's own base URL is used.
    public_base_url: str | None = None
    max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)
    max_image_pixels: int = Field(default=4096 * 4096, ge=64 * 64)
    max_output_side: int = Field(default=1024, ge=64)
    max_prompt_chars: int = Field(default=2000, ge=1)

    # --- worker ---------------------------------------------------------------------
    model_id: str = "segmind/SSD-1B"
    model_device: Literal["auto", "cpu", "cuda"] = "auto"
    model_variant: str | None = None
    gpu_queue: str = "gpu"


@lru_cache
def get_settings() -> Settings:
    return Settings()
