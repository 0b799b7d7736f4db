"""The HTTP front end. It must never import torch, diffusers or the worker package."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response
from sqlalchemy import text

from api.deps import SessionDep
from api.errors import install_error_handlers
from api.img2img.endpoints import router as img2img_router
from api.img2img.listing import router as listing_router


def create_app() -> FastAPI:
    app = FastAPI(
        title="ssd-img2img",
        version="0.1.0",
        description="Segmind-compatible image-to-image API for SSD-1B.",
    )
    install_error_handlers(app)

    @app.middleware("http")
    async def remaining_credits_header(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        balance = getattr(request.state, "remaining_credits", None)
        if balance is not None:
            response.headers["x-remaining-credits"] = str(balance)
        return response

    app.include_router(listing_router)
    app.include_router(img2img_router)

    @app.get("/health", tags=["ops"])
    def health(session: SessionDep) -> dict[str, str]:
        session.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app


app = create_app()
