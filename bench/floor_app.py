"""The floor of bench/service_floor.py: a minimal submit and status on the service's own
stack and libraries (FastAPI, SQLAlchemy over psycopg, boto3, Celery), doing only what
any correct submit must and nothing more:

- submit: look up the API key (one SELECT), decode the base64 and read the image's
  header (size only, no pixel decode), PUT the received bytes to S3, debit and insert
  the job in one transaction, send one Celery message, answer JSON;
- status: one SELECT of the job joined to the caller's key.

Run it as the API is run: `uvicorn bench.floor_app:app` with the service's settings
in the environment. Never part of the service.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import secrets
import uuid
from typing import Annotated, Any

from fastapi import Body, FastAPI, Header
from fastapi.responses import JSONResponse
from PIL import Image
from sqlalchemy import text

from common import storage, tasks
from common.db import get_engine
from common.settings import get_settings
from common.storage import get_storage

app = FastAPI()

_KEY = text(
    "SELECT k.account_id FROM api_keys AS k JOIN accounts AS a ON a.id = k.account_id "
    "WHERE k.key_hash = :hash AND k.revoked_at IS NULL AND a.status = 'active'"
)
_DEBIT = text(
    "UPDATE accounts SET balance = balance - :cost WHERE id = :account AND balance >= :cost "
    "RETURNING balance"
)
_INSERT = text(
    "INSERT INTO jobs (id, account_id, status, queue, work, params, seed, cost, input_key, "
    "output_keys, metrics, attempts) VALUES (:id, :account, 'QUEUED', :queue, 1, "
    "CAST(:params AS jsonb), :seed, :cost, :input_key, '[]', '{}', 0)"
)
_STATUS = text(
    "SELECT j.status, j.created_at, j.started_at, j.finished_at, j.error FROM jobs AS j "
    "JOIN api_keys AS k ON k.account_id = j.account_id "
    "WHERE j.id = :id AND k.key_hash = :hash AND k.revoked_at IS NULL"
)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@app.post("/v2/ssd-img2img")
def submit(
    body: Annotated[dict[str, Any], Body()],
    x_api_key: Annotated[str, Header()] = "",
) -> JSONResponse:
    settings = get_settings()
    with get_engine().connect() as conn:
        account = conn.execute(_KEY, {"hash": _hash(x_api_key)}).scalar_one_or_none()
        conn.rollback()
    if account is None:
        return _error(401, "invalid API key")
    try:
        raw = base64.b64decode(body["image"], validate=True)
        with Image.open(io.BytesIO(raw)) as image:  # the header only
            width, height = image.size
    except (KeyError, binascii.Error, OSError):
        return _error(400, "image: not a base64 image")
    job_id = uuid.uuid4()
    key = storage.input_key(account, job_id)
    get_storage().put(key, raw, "image/jpeg")
    params = {k: v for k, v in body.items() if k != "image"}
    params.update(width=width, height=height)
    cost = int(body.get("samples", 1)) * int(body.get("num_inference_steps", 25))
    with get_engine().begin() as conn:
        balance = conn.execute(_DEBIT, {"cost": cost, "account": account}).scalar_one_or_none()
        if balance is None:
            conn.rollback()
            return _error(406, "insufficient credits")
        conn.execute(
            _INSERT,
            {
                "id": job_id,
                "account": account,
                "queue": settings.gpu_queue,
                "params": json.dumps(params),
                "seed": secrets.randbelow(2**31),
                "cost": cost,
                "input_key": key,
            },
        )
    tasks.wake_gpu_workers(settings.gpu_queue)
    url = f"{settings.public_base_url}/v2/requests/{job_id}/status"
    return JSONResponse(
        {"request_id": str(job_id), "status": "QUEUED", "status_url": url, "poll_url": url}
    )


@app.get("/v2/requests/{request_id}/status")
def status(request_id: uuid.UUID, x_api_key: Annotated[str, Header()] = "") -> JSONResponse:
    with get_engine().connect() as conn:
        row = conn.execute(_STATUS, {"id": request_id, "hash": _hash(x_api_key)}).one_or_none()
        conn.rollback()
    if row is None:
        return _error(404, "request not found")
    state, created, started, finished, error = row
    return JSONResponse(
        {
            "request_id": str(request_id),
            "status": state,
            "error": error,
            "created_at": created.isoformat(),
            "started_at": started.isoformat() if started else None,
            "finished_at": finished.isoformat() if finished else None,
        }
    )


@app.get("/health")
def health() -> dict[str, str]:
    return {"status": "ok"}
