"""Segmind's scheduler names: the canonical list, importable without torch.

The API validates requests against these names and must never import torch or
diffusers; the worker maps each name to a diffusers class in
``worker/schedulers.py``, which checks at import that both lists agree.
"""

from __future__ import annotations

from typing import Final

# Order follows Segmind's ssd-img2img page (the last two come from its sibling
# SD pages, which the ssd-img2img page hides behind "+2 more").
SCHEDULER_NAMES: Final[tuple[str, ...]] = (
    "DDIM",
    "DPM Multi",
    "DPM Single",
    "Euler a",
    "Euler",
    "Heun",
    "DPM2 a Karras",
    "DPM2 Karras",
    "LMS",
    "PNDM",
    "DDPM",
    "UniPC",
)

# Segmind's documented default for ssd-img2img.
DEFAULT_SCHEDULER: Final[str] = "DPM2 Karras"

assert DEFAULT_SCHEDULER in SCHEDULER_NAMES

# Those that evaluate the UNet twice per step: their jobs cost twice the GPU work in the
# fair order (common/scheduler.py). worker/schedulers.py checks this against the
# diffusers classes' `order`.
SECOND_ORDER_SCHEDULERS: Final[frozenset[str]] = frozenset({"Heun", "DPM2 a Karras", "DPM2 Karras"})
