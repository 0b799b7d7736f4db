"""Images per second at batch sizes 1, 2, 4, 8 in one `generate_batch` call.

    .venv/bin/python bench/batching.py                           # tiny model, CPU, 256²
    .venv/bin/python bench/batching.py --device cuda --model full --size 1024 --steps 25

A batch is that many single-sample requests with their own prompts and seeds (what the
scheduler hands a worker: compatible jobs of several tenants). Each size gets one
warm-up call, then `--repeats` timed calls; the speed-up is against batch 1 in the same
run. `--model full` builds the full-size SSD-1B architecture with random weights (no
download; worker/random_model.py), bf16 on CUDA: for the first H100/H200. `--model PATH`
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
from worker.tiny_model import make_tiny_pipeline


def full_size_pipeline(device: str) -> Any:
    """SSD-1B's architecture (UNet 1.33 B parameters), SDXL's text encoders and VAE, with
    random weights (worker/random_model.py): timing only, the images are noise."""
    from worker.random_model import build_random_pipeline

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    with torch.device(device):  # created where it runs: no host copy of 2.4 B weights
        pipe: Any = build_random_pipeline("ssd-1b", dtype=dtype)
    pipe.vae.register_to_config(force_upcast=False)  # bf16/fp32: no VAE round trips
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
