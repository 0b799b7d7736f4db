"""Making a loaded pipeline fast on its device, before the worker reports ready: CPU
threads, memory layout, fused attention projections, optional `torch.compile` on shape
buckets, and a warm-up generation per bucket.

On a GPU the first call pays for CUDA's context, cuBLAS/cuDNN autotuning and (with
compile) the kernels' compilation: seconds to minutes that no client's job should
wait for. The worker therefore warms up first and only then starts claiming.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from PIL import Image

logger = logging.getLogger(__name__)

# The pipe attribute holding the compiled UNet and the sizes it was compiled for.
_COMPILED_ATTR = "_ssd_compiled_unet"


def parse_size(text: str) -> tuple[int, int]:
    """ "1024x768" → (1024, 768): output width × height, multiples of 8."""
    try:
        width, height = (int(part) for part in text.lower().split("x"))
    except ValueError as exc:
        raise ValueError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 1024x1024") from exc
    if width < 64 or height < 64 or width % 8 or height % 8:
        raise ValueError(f"{text!r}: each side must be a multiple of 8, at least 64")
    return width, height


def torch_threads(
    setting: int, device_type: str, cpus: int | None = None, omp: str | None = None
) -> int:
    """CPU threads for torch's kernels. 0 = automatic: OMP_NUM_THREADS when it is set
    (the usual way to size a process to its CPU share, e.g. a container's CPU limit);
    else, when the model runs on the CPUs, all of them but one, which the worker's own
    threads need (the recorder encodes and uploads the last job's images while the next
    one generates; the prefetcher decodes the next inputs); on a GPU, where the CPU only
    feeds it, at most 4, so that several workers on one host do not oversubscribe its
    cores. Threads that outnumber the free cores spin against each other: on the 2-core
    machine two torch threads made the service 0.32x of a plain loop, one 0.73x
    (docs/performance.md, "Service path")."""
    if setting > 0:
        return setting
    omp = os.environ.get("OMP_NUM_THREADS") if omp is None else omp
    if omp and omp.strip().isdigit() and int(omp) > 0:
        return int(omp)
    available = cpus if cpus is not None else len(os.sched_getaffinity(0))
    return max(1, available - 1) if device_type == "cpu" else max(1, min(4, available))


def optimise(pipe: StableDiffusionXLImg2ImgPipeline, device: torch.device) -> list[str]:
    """channels_last for the UNet and VAE, and fused QKV projections, on CUDA (where
    they pay; on a CPU they only change the rounding). Returns what was done."""
    run: Any = pipe
    if device.type != "cuda":
        return []
    run.unet.to(memory_format=torch.channels_last)
    run.vae.to(memory_format=torch.channels_last)
    run.fuse_qkv_projections()
    return ["channels_last", "fused QKV projections"]


def compile_unet(
    pipe: StableDiffusionXLImg2ImgPipeline,
    sizes: Sequence[tuple[int, int]],
    backend: str = "inductor",
) -> None:
    """Compile the UNet for these output sizes only (`dynamic=False`: one graph per
    shape, no guards on sizes). Jobs of other sizes run the eager UNet, so a client's
    unusual size never triggers a recompile (they are slow, and torch stops compiling
    after `cache_size_limit` of them). The compiled kernels are cached in
    TORCHINDUCTOR_CACHE_DIR (the model volume in the worker image)."""
    run: Any = pipe
    compiled = torch.compile(run.unet, backend=backend, dynamic=False, fullgraph=False)
    setattr(pipe, _COMPILED_ATTR, (compiled, frozenset(sizes)))


@contextlib.contextmanager
def unet_for(pipe: StableDiffusionXLImg2ImgPipeline, size: tuple[int, int]) -> Iterator[bool]:
    """For one pipeline call at output `size`: the compiled UNet if `size` is one of its
    buckets (yields True), else the eager one. Call under the pipeline's lock."""
    found = getattr(pipe, _COMPILED_ATTR, None)
    if found is None or size not in found[1]:
        yield False
        return
    run: Any = pipe
    eager = run.unet
    run.unet = found[0]
    try:
        yield True
    finally:
        run.unet = eager


def warmup_sizes(
    setting: str, device_type: str, buckets: Sequence[tuple[int, int]]
) -> list[tuple[int, int]]:
    """WARMUP: `on` every shape bucket, `off` none; `auto` every bucket on CUDA, and one
    64x64 call on a CPU (it checks the path end to end in a fraction of a second)."""
    if setting == "off":
        return []
    if setting == "on" or device_type == "cuda":
        return list(buckets)
    return [(64, 64)]


def warm_up(pipe: StableDiffusionXLImg2ImgPipeline, sizes: Sequence[tuple[int, int]]) -> None:
    """One short generation per size (two denoising steps, guidance on, one sample):
    CUDA's start-up, the kernels' autotuning and, for compiled sizes, the compilation,
    all paid before the first job."""
    from worker.pipeline import GenerationRequest, generate

    for width, height in sizes:
        started = time.perf_counter()
        generate(
            pipe,
            GenerationRequest(
                image=Image.new("RGB", (width, height), (128, 128, 128)),
                prompt="warm-up",
                negative_prompt=None,
                samples=1,
                num_inference_steps=20,
                guidance_scale=7.5,
                strength=0.1,
                seed=0,
                scheduler="Euler",
            ),
        )
        logger.info("warm-up at %dx%d took %.1fs", width, height, time.perf_counter() - started)
