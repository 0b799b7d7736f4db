"""The one pipeline of this worker process, loaded once at start."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLImg2ImgPipeline

_pipeline: StableDiffusionXLImg2ImgPipeline | None = None


def set_pipeline(pipe: StableDiffusionXLImg2ImgPipeline) -> None:
    global _pipeline
    _pipeline = pipe


def get_pipeline() -> StableDiffusionXLImg2ImgPipeline:
    if _pipeline is None:
        raise RuntimeError("the pipeline is not loaded: start the worker with `python -m worker`")
    return _pipeline
