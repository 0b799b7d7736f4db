"""worker/tuning.py on the tiny model: threads, warm-up sizes, compiled shape buckets
(with torch.compile's eager backend: the dispatch, not inductor's code generation),
fused projections, and the GPU-memory recycling rule."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diffusers import StableDiffusionXLImg2ImgPipeline
from PIL import Image

from tests.support.worker_requests import make_request
from worker import tuning
from worker.pipeline import generate, load_pipeline
from worker.recycle import Recycler

pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


def _pipe(model_dir: Path) -> StableDiffusionXLImg2ImgPipeline:
    return load_pipeline(str(model_dir), device="cpu")


def _image(width: int, height: int) -> Image.Image:
    rng = np.random.default_rng(1)
    return Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8))


def test_sizes_threads_and_warm_up_choices() -> None:
    assert tuning.parse_size("1024x768") == (1024, 768)
    for bad in ("1024", "1020x1024", "32x32", "axb"):
        with pytest.raises(ValueError, match=bad):
            tuning.parse_size(bad)
    assert tuning.torch_threads(0, "cpu", cpus=8, omp="") == 7  # one left for its I/O threads
    assert tuning.torch_threads(0, "cpu", cpus=2, omp="") == 1
    assert tuning.torch_threads(0, "cpu", cpus=1, omp="") == 1
    assert tuning.torch_threads(0, "cuda", cpus=16, omp="") == 4  # they only feed the GPU
    assert tuning.torch_threads(0, "cuda", cpus=2, omp="") == 2
    assert tuning.torch_threads(3, "cuda", cpus=16, omp="") == 3
    # OMP_NUM_THREADS sizes the automatic choice (a container's CPU share) ...
    assert tuning.torch_threads(0, "cpu", cpus=8, omp="3") == 3
    # ... but not an explicit TORCH_THREADS, and a value that is no count is ignored.
    assert tuning.torch_threads(2, "cpu", cpus=8, omp="3") == 2
    assert tuning.torch_threads(0, "cpu", cpus=8, omp="auto") == 7
    buckets = [(1024, 1024), (512, 512)]
    assert tuning.warmup_sizes("auto", "cuda", buckets) == buckets
    assert tuning.warmup_sizes("auto", "cpu", buckets) == [(64, 64)]
    assert tuning.warmup_sizes("on", "cpu", buckets) == buckets
    assert tuning.warmup_sizes("off", "cuda", buckets) == []


def test_compiled_unet_serves_its_buckets_only_with_the_same_images(model_dir: Path) -> None:
    pipe: Any = _pipe(model_dir)
    eager_images = generate(pipe, make_request(_image(64, 64))).images
    tuning.compile_unet(pipe, [(64, 64)], backend="eager")
    used: list[str] = []

    def which_unet(done: int, total: int) -> None:
        used.append(type(pipe.unet).__name__)

    compiled_images = generate(pipe, make_request(_image(64, 64)), which_unet).images
    assert set(used) == {"OptimizedModule"}
    used.clear()
    generate(pipe, make_request(_image(96, 64)), which_unet)  # not a bucket: eager
    assert set(used) == {"UNet2DConditionModel"}
    assert type(pipe.unet).__name__ == "UNet2DConditionModel"  # put back after the call
    assert np.array_equal(np.asarray(eager_images[0]), np.asarray(compiled_images[0]))


def test_fused_projections_keep_the_images(model_dir: Path) -> None:
    pipe: Any = _pipe(model_dir)
    request = make_request(_image(64, 64), samples=2)
    before = generate(pipe, request).images
    assert tuning.optimise(pipe, pipe.device) == []  # on a CPU: nothing
    pipe.fuse_qkv_projections()  # what optimise does on CUDA, checked here for equality
    after = generate(pipe, request).images
    for a, b in zip(before, after, strict=True):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 2


def test_warm_up_runs_each_size_and_says_so(
    model_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="worker.tuning")
    tuning.warm_up(_pipe(model_dir), [(64, 64), (96, 64)])
    assert "warm-up at 64x64" in caplog.text and "warm-up at 96x64" in caplog.text


def test_gpu_memory_recycles_the_worker() -> None:
    held = [1000.0]
    recycler = Recycler(0, 0, max_gpu_mb=2000, gpu_mb=lambda: held[0])
    assert recycler.reason() is None
    held[0] = 2500.0
    reason = recycler.reason()
    assert reason is not None and "WORKER_MAX_GPU_MEMORY_MB=2000" in reason
    assert Recycler(0, 0, max_gpu_mb=2000, gpu_mb=lambda: None).reason() is None  # no CUDA
