"""The HTTP front end. It must never import torch, diffusers or the worker package."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from api.account import router as account_router
from api.admin.endpoints import router as admin_router
from api.body_limit import RequestBodyLimit
from api.console import router as console_router
from api.deps import SessionDep
from api.errors import install_error_handlers
from api.img2img.cancel import router as cancel_router
from api.img2img.endpoints import router as img2img_router
from api.img2img.events import router as events_router
from api.img2img.listing import router as listing_router
from api.img2img.outputs import router as outputs_router
from api.img2img.sync import router as sync_router
from api.job_events import job_events_lifespan
from api.job_waiters import job_waiters_lifespan
from api.observability import RequestObservability, not_ready
from api.observability import router as ops_router
from api.response_headers import AccountHeaders
from api.webhooks.endpoints import router as webhooks_router
from common import db, health, metrics
from common.logs import configure_logging
from common.settings import get_settings, warn_test_only

logger = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings = get_settings()
    warn_test_only(settings, logger)
    # The migrations' heads, read once now: parsing every migration file is not for the
    # first probe's time budget (HEALTH_CHECK_TIMEOUT_SECONDS).
    await run_in_threadpool(health.head_revisions)
    metrics.forget_dead_processes()
    ops = metrics.serve_ops(settings.metrics_port, lambda: not_ready(settings))
    # One Redis subscriber per process wakes the synchronous (v1) waiters, another one
    # feeds the event streams (GET /v2/requests/{id}/events).
    try:
        async with job_waiters_lifespan(app), job_events_lifespan(app):
            yield
    finally:
        if ops is not None:
            ops.shutdown()
            ops.server_close()
        metrics.leaving()


def create_app() -> FastAPI:
    configure_logging(get_settings(), "api")
    metrics.announce("api")
    app = FastAPI(
        title="ssd-img2img",
        version="0.1.0",
        description="Segmind-compatible image-to-image API for SSD-1B.",
        lifespan=_lifespan,
    )
    install_error_handlers(app)
    # 413 for bodies above MAX_REQUEST_BYTES, before they are read into memory.
    app.add_middleware(RequestBodyLimit, max_bytes=get_settings().request_body_limit)

    app.add_middleware(AccountHeaders)
    # Outermost: its request id and timing cover everything inside, errors included.
    app.add_middleware(RequestObservability)

    app.include_router(listing_router)
    app.include_router(img2img_router)
    app.include_router(events_router)
    app.include_router(cancel_router)
    app.include_router(outputs_router)
    app.include_router(sync_router)
    app.include_router(account_router)
    app.include_router(admin_router)
    app.include_router(webhooks_router)
    app.include_router(ops_router)
    app.include_router(console_router)

    @app.get("/health", tags=["ops"])
    def health(session: SessionDep) -> dict[str, str]:
        db.ping(session)
        return {"status": "ok"}

    return app


app = create_app()
