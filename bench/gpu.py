"""One command for the first GPU: batching, the optimised pipeline against plain
diffusers, and the whole service path against a plain loop; JSON lines on stdout.

    python -m bench.gpu                      # CUDA if present: full-size SSD-1B, random
    python -m bench.gpu --device cpu --model tiny --sizes 64 --jobs 2   # the smoke test

Phases (`--phases a,b,c`):

a. **Batching**: 1, 2, 4, 8 compatible single-sample requests in one `generate_batch`
   call at each of `--sizes` (default 1024 and 512): images/s, and the speed-up
   against batch 1.
b. **Optimised vs plain**: the worker's pipeline as it runs in production (MODEL_DTYPE
   auto: bf16 on CUDA, fused QKV and channels_last, the input encoded once, pixels made
   uint8 on the device) against plain diffusers fp16 eager (its VAE upcast at each call,
   a PIL output, CUDA generators), the same requests one by one: images/s, latency,
   peak GPU memory, and a check that both ran the same denoising steps and sizes.
c. **Service path**: `--jobs` (16) jobs over HTTP through the API, a worker and S3
   (an embedded stack of its own, or `--api-url/--api-key` of one running), against a
   plain diffusers loop on the same requests in this process; and the GPU's idle
   fraction over the service run (1 − the pipeline calls' time / the wall time).

Workload: `--steps` 25 × `--strength` 0.75, guidance 7.5, schedulers DPM2 Karras and
Euler (`--schedulers`). `--model full` (default on CUDA) builds segmind/SSD-1B's
architecture with random fp16 weights into `--model-dir` (once; timing without any
download: worker/random_model.py); `--model tiny` the test model; or a folder.

On a GPU machine whose Python has torch but nothing else and no network, carry a
wheelhouse (README "GPU"): `make wheelhouse` here, then there
`pip install --no-index --find-links wheelhouse -e '.[worker,stack]'`.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from worker import tuning
from worker.pipeline import GenerationRequest, generate, generate_batch, load_pipeline
from worker.schedulers import make_scheduler

ROOT = Path(__file__).resolve().parent.parent


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(device: torch.device, run: Callable[[], Any]) -> float:
    _sync(device)
    started = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - started


def _peak_mb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None


def _source(size: int) -> Image.Image:
    gradient = Image.linear_gradient("L").resize((size, size))
    return Image.merge("RGB", (gradient, gradient.rotate(90), gradient.rotate(180)))


def requests_for(
    count: int, size: int, steps: int, strength: float, scheduler: str, seed: int = 1000
) -> list[GenerationRequest]:
    image = _source(size)
    return [
        GenerationRequest(
            image=image,
            prompt=f"a lighthouse at dusk, study {i}",
            negative_prompt=None,
            samples=1,
            num_inference_steps=steps,
            guidance_scale=7.5,
            strength=strength,
            seed=seed + i,
            scheduler=scheduler,
        )
        for i in range(count)
    ]


def model_folder(choice: str, folder: Path) -> Path:
    if choice == "tiny":
        from worker.tiny_model import make_tiny_pipeline

        return make_tiny_pipeline(folder / "tiny")
    if choice == "full":
        from worker.random_model import make_random_pipeline

        return make_random_pipeline(folder / "ssd-1b-random")
    return Path(choice)


def production_pipeline(model: Path, device: torch.device) -> Any:
    pipe = load_pipeline(str(model), device.type, variant=_variant(model))
    tuning.optimise(pipe, device)
    return pipe


def _variant(model: Path) -> str | None:
    return "fp16" if any(model.glob("unet/*.fp16.safetensors")) else None


# ---------------------------------------------------------------------- phase a


def phase_a(pipe: Any, device: torch.device, args: argparse.Namespace) -> None:
    for size in args.sizes:
        base = None
        for batch in (1, 2, 4, 8):
            requests = requests_for(batch, size, args.steps, args.strength, args.schedulers[0])
            generate_batch(pipe, requests)  # warm-up: this shape's first call
            seconds = statistics.median(
                _timed(device, lambda r=requests: generate_batch(pipe, r))
                for _ in range(args.repeats)
            )
            rate = batch / seconds
            base = base or rate
            emit(
                phase="a",
                size=size,
                batch=batch,
                seconds=round(seconds, 3),
                images_per_s=round(rate, 3),
                speedup=round(rate / base, 3),
            )


# ---------------------------------------------------------------------- phase b


def _plain_pipeline(model: Path, device: torch.device) -> Any:
    from diffusers import StableDiffusionXLImg2ImgPipeline

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        str(model), dtype=dtype, variant=_variant(model), local_files_only=True
    )
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _plain_run(pipe: Any, device: torch.device, req: GenerationRequest) -> tuple[Image.Image, int]:
    """One request the plain diffusers way; its image and its denoising iterations."""
    pipe.scheduler = make_scheduler(req.scheduler, pipe.scheduler.config)
    steps: list[int] = []

    def count(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        steps.append(i)
        return kwargs

    image = pipe(
        prompt=req.prompt,
        image=req.image,
        strength=req.strength,
        num_inference_steps=req.num_inference_steps,
        guidance_scale=req.guidance_scale,
        generator=torch.Generator(device).manual_seed(req.seed),
        callback_on_step_end=count,
    ).images[0]
    return image, len(steps)


def phase_b(model: Path, device: torch.device, args: argparse.Namespace) -> None:
    for scheduler in args.schedulers:
        work_of: dict[str, list[Any]] = {}
        requests = requests_for(args.jobs, args.sizes[0], args.steps, args.strength, scheduler)
        for name in ("optimised", "plain"):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            if name == "optimised":
                pipe = production_pipeline(model, device)

                def one(r: GenerationRequest, p: Any = pipe) -> tuple[Image.Image, int]:
                    steps: list[int] = []
                    result = generate(p, r, lambda done, total: steps.append(done))
                    return result.images[0], len(steps)
            else:
                pipe = _plain_pipeline(model, device)

                def one(r: GenerationRequest, p: Any = pipe) -> tuple[Image.Image, int]:
                    return _plain_run(p, device, r)

            one(requests[0])  # warm-up
            latencies, work = [], []
            for req in requests:
                _sync(device)
                began = time.perf_counter()
                image, steps = one(req)
                _sync(device)
                latencies.append(time.perf_counter() - began)
                work.append([list(image.size), steps])
            work_of[name] = work
            emit(
                phase="b",
                pipeline=name,
                scheduler=scheduler,
                size=args.sizes[0],
                images_per_s=round(len(requests) / sum(latencies), 3),
                latency_s=round(statistics.median(latencies), 3),
                peak_memory_mb=_peak_mb(device),
            )
            del pipe
        # Both did the same work: the same output sizes and denoising iterations.
        same = work_of["optimised"] == work_of["plain"]
        emit(
            phase="b",
            check="same work",
            scheduler=scheduler,
            ok=same,
            work=work_of["optimised"][:1],
        )
        if not same:
            raise SystemExit(f"phase b: the pipelines did different work: {work_of}")


# ---------------------------------------------------------------------- phase c


@contextmanager
def _stack(
    model: Path, device: torch.device, args: argparse.Namespace
) -> Iterator[tuple[str, str]]:
    """(API URL, API key): the one given, or an embedded stack of its own."""
    if args.api_url:
        yield args.api_url, args.api_key
        return
    from bench.service_floor import _account
    from cli import stack
    from devstack.ports import free_port
    from devstack.stack import purge_state, start_services

    state = Path(tempfile.mkdtemp(prefix="bench-gpu-"))
    try:
        services = start_services(state, fast=True)
        api_url = f"http://127.0.0.1:{free_port()}"
        env = stack.service_env(services, api_url, model)
        env.update(
            MODEL_DEVICE=device.type,
            DEFAULT_MAX_JOBS_IN_FLIGHT="1000000",
            DEFAULT_RATE_LIMIT_PER_MINUTE="10000000",
            MAX_BATCH_IMAGES="1",  # job for job against the plain loop
            SHAPE_BUCKETS=json.dumps([f"{args.sizes[0]}x{args.sizes[0]}"]),
        )
        if _variant(model):
            env["MODEL_VARIANT"] = "fp16"
        os.environ.update(env)
        stack.migrate(env)
        _, key = _account(10**9)
        stack.start_api(state, env, int(api_url.rsplit(":", 1)[1]))
        ready = stack.start_worker(state, env)
        stack.wait_healthy(state, api_url, [ready], timeout=900)
        yield api_url, key
    finally:
        stack.down(state)
        purge_state(state)


def _jpeg_b64(size: int) -> str:
    import base64

    buffer = io.BytesIO()
    _source(size).save(buffer, format="JPEG", quality=95)
    return base64.b64encode(buffer.getvalue()).decode()


def _service_run(api_url: str, key: str, requests: list[GenerationRequest]) -> dict[str, float]:
    import httpx

    size = requests[0].image.size[0]
    body = {
        "image": _jpeg_b64(size),
        "prompt": requests[0].prompt,
        "num_inference_steps": requests[0].num_inference_steps,
        "strength": requests[0].strength,
        "guidance_scale": requests[0].guidance_scale,
        "scheduler": requests[0].scheduler,
    }
    with httpx.Client(base_url=api_url, headers={"x-api-key": key}, timeout=120) as client:
        started = time.time()
        ids = []
        for req in requests:
            answer = client.post(
                "/v2/ssd-img2img", json={**body, "prompt": req.prompt, "seed": req.seed}
            )
            answer.raise_for_status()
            ids.append(answer.json()["request_id"])
        metrics, finished = [], 0.0
        for request_id in ids:
            while True:
                status = client.get(f"/v2/requests/{request_id}").json()
                if status["status"] in ("COMPLETED", "FAILED", "CANCELLED"):
                    break
                time.sleep(0.05)
            if status["status"] != "COMPLETED":
                raise SystemExit(f"job {request_id}: {status}")
            metrics.append(status["metrics"])
            finished = time.time()
    wall = finished - started
    busy = sum(m.get("inference_time", 0.0) for m in metrics)
    return {"wall_s": wall, "busy_s": busy}


def phase_c(model: Path, device: torch.device, args: argparse.Namespace) -> None:
    scheduler = args.schedulers[0]
    requests = requests_for(args.jobs, args.sizes[0], args.steps, args.strength, scheduler)
    with _stack(model, device, args) as (api_url, key):
        _service_run(api_url, key, requests[:1])  # the stack's first job: warm
        service = _service_run(api_url, key, requests)
    pipe = _plain_pipeline(model, device)
    _plain_run(pipe, device, requests[0])  # warm-up
    plain = sum(_timed(device, lambda r=r: _plain_run(pipe, device, r)) for r in requests)
    emit(
        phase="c",
        scheduler=scheduler,
        size=args.sizes[0],
        jobs=len(requests),
        service_images_per_s=round(len(requests) / service["wall_s"], 3),
        plain_images_per_s=round(len(requests) / plain, 3),
        ratio=round(plain / service["wall_s"], 3),
        gpu_idle_fraction=round(max(0.0, 1 - service["busy_s"] / service["wall_s"]), 3),
    )


# ------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--model", default="full" if cuda else "tiny", help="full, tiny, or a pipeline folder"
    )
    parser.add_argument("--model-dir", type=Path, default=Path(tempfile.gettempdir()) / "bench-gpu")
    parser.add_argument("--phases", default="a,b,c")
    parser.add_argument(
        "--sizes", default="1024,512", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--strength", type=float, default=0.75)
    parser.add_argument("--schedulers", default="DPM2 Karras,Euler", type=lambda s: s.split(","))
    parser.add_argument("--jobs", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--api-url", help="phase c against a running stack (with --api-key)")
    parser.add_argument("--api-key")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    torch.set_num_threads(tuning.torch_threads(0, device.type))
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    machine = torch.cuda.get_device_name(0) if device.type == "cuda" else platform.machine()
    emit(
        phase="setup",
        machine=machine,
        cpus=os.cpu_count(),
        torch=torch.__version__,
        commit=commit,
        python=sys.version.split()[0],
        args={k: v for k, v in vars(args).items() if k != "api_key" and not isinstance(v, Path)},
    )
    started = time.perf_counter()
    model = model_folder(args.model, args.model_dir)
    emit(phase="model", folder=str(model), seconds=round(time.perf_counter() - started, 1))
    phases = set(args.phases.split(","))
    if "a" in phases:
        pipe = production_pipeline(model, device)
        phase_a(pipe, device, args)
        del pipe
    if "b" in phases:
        phase_b(model, device, args)
    if "c" in phases:
        phase_c(model, device, args)
    emit(phase="done", seconds=round(time.perf_counter() - started, 1))


if __name__ == "__main__":
    main()
