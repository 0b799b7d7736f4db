"""Images per second at batch sizes 1, 2, 4, 8 in one `generate_batch` call.

    .venv/bin/python bench/batching.py                           # tiny model, CPU, 256²
    .venv/bin/python bench/batching.py --device cuda --model full --size 1024 --steps 25

A batch is that many single-sample requests with their own prompts and seeds (what the
scheduler hands a worker: compatible jobs of several tenants). Each size gets one
warm-up call, then `--repeats` timed calls; the speed-up is against batch 1 in the same
run. `--model full` builds the full-size SSD-1B architecture with random weights (no
download; platform-notes.md), fp16 on CUDA: for the first H100/H200. `--model PATH`
loads a diffusers pipeline folder.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from worker.pipeline import GenerationRequest, generate_batch, load_pipeline
from worker.tiny_model import build_tiny_pipeline, make_tiny_pipeline


def full_size_pipeline(device: str) -> Any:
    """SSD-1B's architecture (UNet 1.33 B parameters), SDXL's text encoders and VAE, with
    random weights: timing only, the images are noise."""
    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    dtype = torch.float16 if device == "cuda" else torch.float32
    unet = UNet2DConditionModel(
        sample_size=128,
        block_out_channels=(320, 640, 1280),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2D",
        transformer_layers_per_block=[[1, 1], [2, 2], [4, 4]],
        reverse_transformer_layers_per_block=[[4, 4, 10], [2, 1, 1], [1, 1, 1]],
        attention_head_dim=[5, 10, 20],
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
    )
    vae = AutoencoderKL(
        block_out_channels=[128, 256, 512, 512],
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        scaling_factor=0.13025,
    )
    # The tiny model's byte-level tokenizer serves: 77 ids per prompt either way.
    tiny = build_tiny_pipeline()
    tokenizer: CLIPTokenizer = tiny.tokenizer
    tokenizer_2: CLIPTokenizer = tiny.tokenizer_2
    special = {
        "vocab_size": 49408,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    text_l = CLIPTextModel(
        CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_attention_heads=12,
            num_hidden_layers=12,
            hidden_act="quick_gelu",
            **special,
        )
    )
    text_g = CLIPTextModelWithProjection(
        CLIPTextConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_attention_heads=20,
            num_hidden_layers=32,
            hidden_act="gelu",
            projection_dim=1280,
            **special,
        )
    )
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=text_l,
        text_encoder_2=text_g,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=EulerDiscreteScheduler(
            beta_start=0.00085,
            beta_end=0.012,
            beta_schedule="scaled_linear",
            timestep_spacing="leading",
            steps_offset=1,
        ),
        add_watermarker=False,
    )
    pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline(device: str) -> Any:
    folder = Path(tempfile.mkdtemp(prefix="bench-tiny-")) / "tiny"
    make_tiny_pipeline(folder)
    return load_pipeline(str(folder), device)


def requests(count: int, size: int, steps: int, strength: float) -> list[GenerationRequest]:
    image = Image.new("RGB", (size, size), (180, 60, 90))
    return [
        GenerationRequest(
            image=image,
            prompt=f"a lighthouse at dusk, study {i}",
            negative_prompt=None,
            samples=1,
            num_inference_steps=steps,
            guidance_scale=7.5,
            strength=strength,
            seed=1000 + i,
            scheduler="Euler",
        )
        for i in range(count)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="tiny", help="tiny, full, or a pipeline folder")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", default="1,2,4,8")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--strength", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(2)

    if args.model == "tiny":
        pipe = tiny_pipeline(args.device)
    elif args.model == "full":
        pipe = full_size_pipeline(args.device)
    else:
        pipe = load_pipeline(args.model, args.device)

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    machine = (
        torch.cuda.get_device_name(0) if args.device == "cuda" else platform.processor()
    ) or platform.machine()
    print(
        f"# {args.model} model, {args.device} ({machine}), torch {torch.__version__}, "
        f"{args.size}², {args.steps} steps × {args.strength}, commit {commit}"
    )
    print("| batch | s per call (median) | images/s | speed-up vs 1 |")
    print("|---|---|---|---|")
    base: float | None = None
    for size in (int(b) for b in args.batches.split(",")):
        batch = requests(size, args.size, args.steps, args.strength)
        generate_batch(pipe, batch)  # warm-up
        times = []
        for _ in range(args.repeats):
            if args.device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            generate_batch(pipe, batch)
            if args.device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        per_call = statistics.median(times)
        rate = size / per_call
        base = base or rate
        print(f"| {size} | {per_call:.3f} | {rate:.2f} | {rate / base:.2f}× |")


if __name__ == "__main__":
    main()
