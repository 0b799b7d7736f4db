"""The HTTP front end. It must never import torch, diffusers or the worker package."""

from __future__ import annotations

from fastapi import FastAPI
from sqlalchemy import text

from api.deps import SessionDep
from api.errors import install_error_handlers
from api.img2img.endpoints import router as img2img_router


def create_app() -> FastAPI:
    app = FastAPI(
        title="ssd-img2img",
        version="0.1.0",
        description="Segmind-compatible image-to-image API for SSD-1B.",
    )
    install_error_handlers(app)
    app.include_router(img2img_router)

    @app.get("/health", tags=["ops"])
    def health(session: SessionDep) -> dict[str, str]:
        session.execute(text("SELECT 1"))
        return {"status": "ok"}

    return app


app = create_app()
