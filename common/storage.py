"""Object storage (any S3-compatible server) for input images and output JPEGs.

Objects live under per-account prefixes so that retention, export and deletion can be
done per tenant with a prefix listing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from common.settings import Settings, get_settings

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client


def input_key(account_id: uuid.UUID, job_id: uuid.UUID, extension: str = "png") -> str:
    """Where a job's input image is kept, as received (its format's extension)."""
    return f"inputs/{account_id}/{job_id}.{extension}"


def output_key(account_id: uuid.UUID, job_id: uuid.UUID, index: int) -> str:
    return f"outputs/{account_id}/{job_id}/{index}.jpg"


# S3 error codes meaning "no such object" (HEAD answers a bare 404).
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
# DeleteObjects takes at most this many keys per request.
_DELETE_BATCH = 1000


class ObjectMissing(Exception):
    """The object does not exist (never written, or deleted by retention)."""


@dataclass(frozen=True)
class StoredObject:
    """An object being read: its bytes come in chunks, without holding them all."""

    chunks: Iterator[bytes]
    content_length: int
    content_type: str


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

    def presigned_get_url(self, key: str, ttl: int | None = None) -> str:
        """A GET URL valid for `ttl` seconds (default OUTPUT_URL_TTL_SECONDS)."""
        return self._public_s3.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": key},
            ExpiresIn=self.url_ttl if ttl is None else ttl,
        )

    def open(self, key: str, chunk_size: int = 64 * 1024) -> StoredObject:
        """Stream an object. Raises ObjectMissing if there is none."""
        try:
            response = self._s3.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                raise ObjectMissing(key) from exc
            raise
        body: Any = response["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(chunk_size)
            finally:
                body.close()

        return StoredObject(
            chunks=chunks(),
            content_length=int(response["ContentLength"]),
            content_type=response.get("ContentType") or "application/octet-stream",
        )

    def exists(self, key: str) -> bool:
        try:
            self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return False
            raise
        return True

    def delete_many(self, keys: Iterable[str]) -> dict[str, str]:
        """Delete objects, up to 1000 per request. Missing objects count as deleted (S3
        semantics). Returns {key: error code} of those that could not be deleted."""
        unique = sorted(set(keys))
        failed: dict[str, str] = {}
        for start in range(0, len(unique), _DELETE_BATCH):
            batch = unique[start : start + _DELETE_BATCH]
            response = self._s3.delete_objects(
                Bucket=self.bucket,
                Delete={"Objects": [{"Key": key} for key in batch], "Quiet": True},
            )
            for error in response.get("Errors", []):
                if error.get("Code") not in _MISSING:
                    failed[error.get("Key", "")] = error.get("Code", "unknown")
        return failed

    def list_pages(self, prefix: str) -> Iterator[list[tuple[str, datetime]]]:
        """(key, last modified) of the objects under `prefix`, a listing page at a time."""
        paginator = self._s3.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            yield [(obj["Key"], obj["LastModified"]) for obj in page.get("Contents", [])]

    def ensure_bucket(self) -> None:
        existing = {b["Name"] for b in self._s3.list_buckets().get("Buckets", [])}
        if self.bucket not in existing:
            self._s3.create_bucket(Bucket=self.bucket)


@lru_cache
def get_storage() -> Storage:
    return Storage(get_settings())
