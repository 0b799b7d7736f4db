"""The full-size random pipeline (`ssd-img2img model make-random --arch ssd-1b`): SSD-1B's
real architecture, checked on the meta device (shapes and counts, no memory)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from cli.main import main
from worker.random_model import SSD_1B_UNET_PARAMETERS, build_random_pipeline


def _parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_the_ssd_1b_architecture_has_its_published_sizes() -> None:
    with torch.device("meta"):
        pipe = build_random_pipeline("ssd-1b")
    # SSD-1B's distilled UNet, and SDXL's text encoders and VAE, parameter for parameter.
    assert _parameters(pipe.unet) == SSD_1B_UNET_PARAMETERS == 1_331_334_404
    assert _parameters(pipe.text_encoder) == 123_060_480  # CLIP ViT-L/14
    assert _parameters(pipe.text_encoder_2) == 694_659_840  # OpenCLIP ViT-bigG/14
    assert _parameters(pipe.vae) == 83_653_863
    for module in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2, pipe.vae):
        assert {p.dtype for p in module.parameters()} == {torch.float16}
    unet = pipe.unet.config
    assert unet.mid_block_type == "UNetMidBlock2D"  # no mid transformer: the distillation
    assert unet.cross_attention_dim == 2048  # 768 + 1280: both text encoders
    assert pipe.vae_scale_factor == 8
    assert torch.get_default_dtype() == torch.float32  # put back after building


def test_unknown_architectures_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown architecture"):
        build_random_pipeline("sd-3")
    refused = CliRunner().invoke(main, ["model", "make-random", "--arch", "sd-3", "x"])
    assert refused.exit_code == 2 and "ssd-1b" in refused.output
