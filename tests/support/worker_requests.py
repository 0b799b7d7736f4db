"""The generation request the worker tests start from."""

from __future__ import annotations

import dataclasses
from typing import Any

from PIL import Image

from worker.pipeline import GenerationRequest


def make_request(image: Image.Image, **changes: Any) -> GenerationRequest:
    """A valid request for `image`; `changes` replace any field."""
    request = GenerationRequest(
        image=image,
        prompt="a lighthouse at dusk",
        negative_prompt=None,
        samples=1,
        num_inference_steps=20,
        guidance_scale=7.5,
        strength=0.3,
        seed=1234,
        scheduler="Euler",
    )
    return dataclasses.replace(request, **changes)
