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
        # Under the API's minimum of 20 (the worker has none): 3 denoising steps at this
        # strength, each a UNet call that dominates a worker test's time.
        num_inference_steps=10,
        guidance_scale=7.5,
        strength=0.3,
        seed=1234,
        scheduler="Euler",
    )
    return dataclasses.replace(request, **changes)
