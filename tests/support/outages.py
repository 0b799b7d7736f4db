"""Services taken down for a block and brought back as they were."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from devstack import s3


@contextmanager
def s3_down(state_dir: Path, env: Mapping[str, str]) -> Iterator[None]:
    """The stack's S3 server stopped for the block, then started again on the same port
    with the same credentials and bucket (its data kept)."""
    port = int(env["S3_ENDPOINT_URL"].rsplit(":", 1)[1])
    s3.stop_s3(state_dir)
    try:
        yield
    finally:
        s3.start_s3(
            state_dir,
            port=port,
            access_key=env["S3_ACCESS_KEY_ID"],
            secret_key=env["S3_SECRET_ACCESS_KEY"],
            bucket=env["S3_BUCKET"],
        )
