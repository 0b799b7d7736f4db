"""Object storage (any S3-compatible server) for input images and output JPEGs.

Objects live under per-account prefixes so that retention, export and deletion can be
done per tenant with a prefix listing.
"""

from __future__ import annotations

import uuid
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from common.settings import Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def input_key(account_id: uuid.UUID, job_id: uuid.UUID) -> str:
    return f"inputs/{account_id}/{job_id}.png"


def output_key(account_id: uuid.UUID, job_id: uuid.UUID, index: int) -> str:
    return f"outputs/{account_id}/{job_id}/{index}.jpg"


def _client(settings: Settings, endpoint_url: str | None) -> S3Client:
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=settings.s3_secret_access_key,
        config=Config(
            s3={"addressing_style": "path"},  # self-hosted S3 servers rarely do vhost names
            signature_version="s3v4",
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
        ),
    )


class Storage:
    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.url_ttl = settings.output_url_ttl_seconds
        self._s3 = _client(settings, settings.s3_endpoint_url)
        # Presigned URLs embed the host they were signed for, so sign with the
        # endpoint clients can reach.
        public = settings.s3_public_endpoint_url or settings.s3_endpoint_url
        self._public_s3 = (
            self._s3 if public == settings.s3_endpoint_url else _client(settings, public)
        )

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get(self, key: str) -> bytes:
        body: Any = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"]
        return bytes(body.read())

    def presigned_get_url(self, key: str) -> str:
        return self._public_s3.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=self.url_ttl
        )

    def ensure_bucket(self) -> None:
        existing = {b["Name"] for b in self._s3.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            self._s3.create_bucket(Bucket=self.bucket)


@lru_cache
def get_storage() -> Storage:
    return Storage(get_settings())
