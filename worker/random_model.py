"""A full-size pipeline with SSD-1B's architecture and random weights, built offline.

Model weights cannot be downloaded on our machines, but GPU timings are only valid on
the real architecture: the same layers, shapes and FLOPs as segmind/SSD-1B, with random
numbers in them. Its images are noise; its speed and memory are the real model's.

SSD-1B is SDXL with a distilled UNet: the same channels (320/640/1280), text encoders
(CLIP ViT-L and OpenCLIP ViT-bigG) and VAE, but fewer transformer layers per block
and a plain ResNet mid block. The UNet config below is the one of SSD-1B's diffusers
conversion (diffusers PR #5400; ComfyUI's SSD-1B detection table) and builds
1,331,334,404 parameters, SSD-1B's published 1.3 B (tests/worker/test_random_model.py
checks the count on the meta device, without allocating a byte).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, StableDiffusionXLImg2ImgPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from worker.tiny_model import assemble, byte_level_tokenizer, save_new_pipeline, ssd1b_scheduler

ARCHITECTURES = ("ssd-1b",)
SSD_1B_UNET_PARAMETERS = 1_331_334_404

SSD_1B_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    # The distillation's main cut: no transformer in the mid block.
    "mid_block_type": "UNetMidBlock2D",
    "transformer_layers_per_block": [[1, 1], [2, 2], [4, 4]],
    "reverse_transformer_layers_per_block": [[4, 4, 10], [2, 1, 1], [1, 1, 1]],
    "attention_head_dim": [5, 10, 20],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}

_VOCAB = 49408
_MAX_TOKENS = 77
# CLIP ViT-L/14 (SDXL's text_encoder) and OpenCLIP ViT-bigG/14 (text_encoder_2).
_CLIP_L: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
}
_CLIP_BIG_G: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_attention_heads": 20,
    "num_hidden_layers": 32,
    "projection_dim": 1280,
    "hidden_act": "gelu",
}
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}

_MARKER_TEXT = """\
Full-size SSD-1B-architecture img2img pipeline with RANDOM weights (seed {seed}, {dtype}).

Built by `ssd-img2img model make-random --arch ssd-1b` for GPU benchmarks without
downloading the model: segmind/SSD-1B's layers and shapes (a 1.33 B-parameter UNet,
SDXL's text encoders and VAE), random numbers in them. Its speed and memory are the
real model's; its images are noise. Saved with variant="{variant}".
"""


@contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_random_pipeline(
    arch: str = "ssd-1b", seed: int = 0, dtype: torch.dtype = torch.float16
) -> StableDiffusionXLImg2ImgPipeline:
    """The pipeline in memory, weights random (the same seed, the same weights) and
    created in `dtype` directly (no fp32 copy of 2.4 B parameters on the way). Under
    ``torch.device("meta")`` it allocates nothing: for checking shapes and counts."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; expected one of {ARCHITECTURES}")
    with tempfile.TemporaryDirectory() as scratch, torch.random.fork_rng(devices=[]):
        # Any prompt tokenizes into ids inside the real vocabulary's range; what the
        # ids mean does not matter to a timing.
        tokenizer = byte_level_tokenizer(Path(scratch))
        tokenizer_2 = byte_level_tokenizer(Path(scratch))
        special = {
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        }
        common = {"vocab_size": _VOCAB, "max_position_embeddings": _MAX_TOKENS, **special}
        torch.manual_seed(seed)
        with _default_dtype(dtype):
            text_encoder = CLIPTextModel(CLIPTextConfig(**_CLIP_L, **common))
            text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_CLIP_BIG_G, **common))
            unet = UNet2DConditionModel(**SSD_1B_UNET)
            vae = AutoencoderKL(**SDXL_VAE)
    with torch.device("cpu"):  # the scheduler's tables, even under a meta device
        scheduler = ssd1b_scheduler()
    return assemble(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler)


def make_random_pipeline(out_dir: Path, arch: str = "ssd-1b", seed: int = 0) -> Path:
    """Build the full-size random pipeline in fp16 and save it as variant "fp16" (load
    it with MODEL_VARIANT=fp16, as segmind/SSD-1B's own fp16 files); idempotent. About
    4.5 GB on disk and a minute on two CPU cores."""
    marker = _MARKER_TEXT.format(seed=seed, dtype="float16", variant="fp16")
    return save_new_pipeline(
        out_dir, lambda: build_random_pipeline(arch, seed, torch.float16), marker, variant="fp16"
    )
