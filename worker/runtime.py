"""The one pipeline and the one runner of this worker process, set up once at start."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from worker.runner import Runner

_pipeline: StableDiffusionXLImg2ImgPipeline | None = None
_runner: Runner | None = None


def set_pipeline(pipe: StableDiffusionXLImg2ImgPipeline) -> None:
    global _pipeline
    _pipeline = pipe


def get_pipeline() -> StableDiffusionXLImg2ImgPipeline:
    if _pipeline is None:
        raise RuntimeError("the pipeline is not loaded: start the worker with `python -m worker`")
    return _pipeline


def set_runner(runner: Runner) -> None:
    global _runner
    _runner = runner


def get_runner() -> Runner:
    if _runner is None:
        raise RuntimeError("no runner: start the worker with `python -m worker`")
    return _runner
