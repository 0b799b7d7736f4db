"""Loading the SDXL img2img pipeline and running generation requests on it, alone or
several compatible ones batched into one pipeline call."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from PIL import Image

from worker import tuning
from worker.model_source import (
    HOW_TO_FIX,
    ModelLoadError,
    check_model_source,
    hub_offline,
    local_folder,
    looks_like_path,
    probe_hub,
)
from worker.schedulers import SCHEDULERS, UnknownSchedulerError, make_scheduler

logger = logging.getLogger(__name__)

# Attribute on the pipe holding the model's own scheduler config, so every job's
# scheduler is built from it and never from the previous job's scheduler.
_BASE_SCHEDULER_ATTR = "_ssd_base_scheduler_config"


class _DropEmptyFp32Warning(logging.Filter):
    """diffusers 0.42 warns "modules ... should be kept in float32: []" whenever the
    SDXL pipeline casts its VAE (twice per call), even with no such module."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "should be kept in float32: []" not in record.getMessage()


logging.getLogger("diffusers.models.modeling_utils").addFilter(_DropEmptyFp32Warning())

# One generation at a time per process: generate_batch() swaps pipe.scheduler, which
# concurrent calls on the same pipe would trample.
_GENERATE_LOCK = threading.Lock()


@dataclass
class GenerationRequest:
    """One img2img job, validated by the API; ``seed`` is already resolved (never -1)."""

    image: Image.Image
    prompt: str
    negative_prompt: str | None
    samples: int
    num_inference_steps: int
    guidance_scale: float
    strength: float
    seed: int
    scheduler: str


@dataclass
class GenerationResult:
    images: list[Image.Image]
    # Iterations of the denoising loop, i.e. step callbacks: int(steps × strength)
    # for first-order schedulers, about twice that for Heun and DPM2.
    steps_run: int
    # Set when the request's pixels are not finite (a numerical overflow: NaN decodes to
    # a black image): the job must fail, not deliver them. `images` is then empty.
    failure: str | None = None
    # Seconds of the call's phases, shared by its requests: "encode" (prompts and VAE
    # encode), "denoise" (the loop), "decode" (VAE decode and the copy to uint8).
    timings: Mapping[str, float] = field(default_factory=dict)


NON_FINITE_OUTPUT = (
    "the model produced invalid pixels (NaN or infinite: a numerical overflow) for this "
    "request; nothing was delivered and the job was refunded. Retry, or use another seed"
)


# --------------------------------------------------------------------------- loading


def _as_any(pipe: StableDiffusionXLImg2ImgPipeline) -> Any:
    """The pipe, untyped.

    To mypy, ``diffusers.StableDiffusionXLImg2ImgPipeline`` is the attribute-less
    placeholder diffusers defines for installs without torch; the rest of the
    project annotates with that name, so we keep it in signatures and drop the
    type where the pipe's real attributes are used.
    """
    return pipe


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` → CUDA when available, else CPU; anything else as torch spells it."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        target = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"invalid device {device!r}: {exc}") from exc
    if target.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device {device!r} asked for, but torch sees no CUDA device")
    return target


def _from_pretrained(
    source: str, dtype: torch.dtype, variant: str | None, local_files_only: bool
) -> StableDiffusionXLImg2ImgPipeline:
    pipe: StableDiffusionXLImg2ImgPipeline = StableDiffusionXLImg2ImgPipeline.from_pretrained(
        source,
        dtype=dtype,
        variant=variant,
        add_watermarker=False,
        local_files_only=local_files_only,
    )
    return pipe


def _load_local(
    folder: Path, dtype: torch.dtype, variant: str | None
) -> StableDiffusionXLImg2ImgPipeline:
    try:
        return _from_pretrained(str(folder), dtype, variant, local_files_only=True)
    except Exception as exc:
        raise ModelLoadError(
            f"cannot load the pipeline in {folder}: {type(exc).__name__}: {exc}. {HOW_TO_FIX}"
        ) from exc


def _load_hub(
    model_id: str, dtype: torch.dtype, variant: str | None, on_cuda: bool
) -> StableDiffusionXLImg2ImgPipeline:
    # fp16 files halve the download on CUDA; repos without them load the default files.
    variants: list[str | None] = (
        [variant] if variant is not None else (["fp16", None] if on_cuda else [None])
    )
    errors: list[str] = []

    def attempt(local_files_only: bool) -> StableDiffusionXLImg2ImgPipeline | None:
        for v in variants:
            try:
                return _from_pretrained(model_id, dtype, v, local_files_only)
            except Exception as exc:
                where = "cache" if local_files_only else "hub"
                errors.append(f"{where}, variant={v}: {type(exc).__name__}: {exc}")
        return None

    # The cache first: a cached model must load offline. (huggingface_hub 2.x still
    # makes one side request here, its "agent harness" registry, 3 s timeout, once
    # per process, unless HF_HUB_OFFLINE is set.)
    pipe = attempt(local_files_only=True)
    if pipe is not None:
        return pipe
    if hub_offline():
        raise ModelLoadError(
            f"{model_id!r} is not fully in the Hugging Face cache and HF_HUB_OFFLINE is set, "
            f"so it cannot be downloaded. {HOW_TO_FIX}"
        )
    probe_hub(model_id)
    pipe = attempt(local_files_only=False)
    if pipe is not None:
        return pipe
    hub_errors = "; ".join(errors[len(variants) :])  # the cache misses are expected
    raise ModelLoadError(
        f"cannot load {model_id!r} from the Hugging Face hub ({hub_errors}). {HOW_TO_FIX}"
    )


DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def resolve_dtype(name: str, target: torch.device) -> torch.dtype:
    """``auto`` → bfloat16 on CUDA, float32 elsewhere (CPUs have no fast half kernels).

    bfloat16 rather than float16 on CUDA: it has float32's range, so SDXL's VAE, which
    overflows in float16, runs in it as is, with no per-call casts to float32 and back
    (diffusers' `force_upcast`), and no NaN. Its 8-bit mantissa (float16 has 11) moves
    pixels by a few levels against float16: other images for a seed, not worse ones.
    float16 is as fast on H100/H200; with it, set VAE_ID to an fp16-safe VAE
    (madebyollin/sdxl-vae-fp16-fix) or the VAE round trips come back."""
    if name == "auto":
        return torch.bfloat16 if target.type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ModelLoadError(f"MODEL_DTYPE {name!r}: expected auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


def load_pipeline(
    model_id: str,
    device: str = "auto",
    variant: str | None = None,
    dtype_name: str = "auto",
    vae_id: str | None = None,
) -> StableDiffusionXLImg2ImgPipeline:
    """Load ``model_id`` (a local folder or a hub id) ready for :func:`generate`, in
    ``dtype_name`` (:func:`resolve_dtype`), with the VAE ``vae_id`` instead of the
    model's own if given. Raises :class:`ModelLoadError`, saying what to set, when the
    model cannot be loaded.
    """
    model_id = model_id.strip()
    check_model_source(model_id)
    target = resolve_device(device)
    dtype = resolve_dtype(dtype_name, target)

    folder = local_folder(model_id)
    if folder is not None:
        pipe = _load_local(folder, dtype, variant)
    else:
        pipe = _load_hub(model_id, dtype, variant, on_cuda=target.type == "cuda")
    if vae_id:
        _as_any(pipe).register_modules(vae=_load_vae(vae_id.strip(), dtype))
    _settle_vae_precision(pipe, dtype, own_vae=not vae_id)

    _as_any(pipe).to(target)
    _as_any(pipe).set_progress_bar_config(disable=True)
    remember_base_scheduler_config(pipe)
    logger.info("loaded %s on %s (%s)", model_id, target, dtype)
    return pipe


def _load_vae(vae_id: str, dtype: torch.dtype) -> Any:
    """An AutoencoderKL from a folder (with or without a `vae` subfolder) or a hub id
    (the cache first, like the model)."""
    from diffusers import AutoencoderKL

    folder = Path(vae_id).expanduser()
    if folder.exists() or looks_like_path(vae_id):
        root = folder / "vae" if (folder / "vae" / "config.json").is_file() else folder
        if not (root / "config.json").is_file():
            raise ModelLoadError(f"VAE_ID {vae_id!r} is not a diffusers AutoencoderKL folder")
        return AutoencoderKL.from_pretrained(str(root), dtype=dtype, local_files_only=True)
    try:
        return AutoencoderKL.from_pretrained(vae_id, dtype=dtype, local_files_only=True)
    except Exception as cached_miss:
        if hub_offline():
            raise ModelLoadError(
                f"VAE_ID {vae_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set"
            ) from cached_miss
    probe_hub(vae_id)
    try:
        return AutoencoderKL.from_pretrained(vae_id, dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(f"cannot load VAE_ID {vae_id!r}: {type(exc).__name__}: {exc}") from exc


def _settle_vae_precision(
    pipe: StableDiffusionXLImg2ImgPipeline, dtype: torch.dtype, own_vae: bool
) -> None:
    """Clear the VAE's `force_upcast` wherever its dtype is safe (bfloat16, float32, or
    a VAE given by VAE_ID, which is asserted fp16-safe): diffusers then runs encode and
    decode in the pipeline's dtype instead of casting the VAE to float32 and back at
    every call. float16 with the model's own VAE keeps it, and says so."""
    vae = _as_any(pipe).vae
    if dtype == torch.float16 and own_vae and vae.config.force_upcast:
        logger.warning(
            "float16 with the model's own VAE: every VAE encode and decode runs in float32 "
            "(casting it there and back); set MODEL_DTYPE=bfloat16, or VAE_ID to an "
            "fp16-safe VAE such as madebyollin/sdxl-vae-fp16-fix"
        )
        return
    vae.register_to_config(force_upcast=False)


def remember_base_scheduler_config(pipe: StableDiffusionXLImg2ImgPipeline) -> Mapping[str, Any]:
    """The model's own scheduler config, saved on the pipe the first time it is asked for."""
    config: Mapping[str, Any] | None = getattr(pipe, _BASE_SCHEDULER_ATTR, None)
    if config is None:
        config = MappingProxyType(dict(_as_any(pipe).scheduler.config))
        setattr(pipe, _BASE_SCHEDULER_ATTR, config)
    return config


# ------------------------------------------------------------------------ generating


def denoising_steps(num_inference_steps: int, strength: float) -> int:
    """Steps img2img really runs; 0 makes diffusers fail with an obscure reshape error."""
    return min(int(num_inference_steps * strength), num_inference_steps)


def _check(req: GenerationRequest) -> None:
    if req.samples < 1:
        raise ValueError(f"samples must be at least 1, got {req.samples}")
    if req.seed < 0:
        raise ValueError(f"seed must be resolved to a non-negative value, got {req.seed}")
    if denoising_steps(req.num_inference_steps, req.strength) < 1:
        raise ValueError(
            f"num_inference_steps × strength = {req.num_inference_steps} × {req.strength} "
            "gives no denoising step; raise one of them"
        )


def batch_key_fields(req: GenerationRequest) -> tuple[tuple[int, int], str, int, float, float]:
    """What requests must share to run in one :func:`generate_batch` call.

    (input image size, scheduler, num_inference_steps, strength, guidance_scale):
    one call has one latent size, one timestep schedule and one guidance scale.
    The input size rather than the output size: the API already floors sides to
    multiples of 8, so they coincide, and an exact match needs no knowledge of
    the VAE's scale factor.
    """
    return (
        req.image.size,
        req.scheduler,
        req.num_inference_steps,
        req.strength,
        req.guidance_scale,
    )


_BATCH_KEY_NAMES = ("image size", "scheduler", "num_inference_steps", "strength", "guidance_scale")

# Scheduler classes whose noise does not come from the `generator` argument:
# DPMSolverSDEScheduler samples one Brownian tree for the whole batch, seeded by
# its own `noise_sampler_seed`, so a job's images would depend on its batch-mates.
# None of the 12 in worker.schedulers is one (each draws no noise or draws it
# through randn_tensor, one generator per sample: tests/worker/test_batching.py
# checks them all); this keeps a later addition from batching irreproducibly.
_NOISE_OUTSIDE_GENERATOR = frozenset({"DPMSolverSDEScheduler"})


def batchable(scheduler_name: str) -> bool:
    """Whether requests using ``scheduler_name`` can share a :func:`generate_batch`
    call and still each give the images they give alone.

    Raises :class:`worker.schedulers.UnknownSchedulerError` for an unknown name.
    """
    if scheduler_name not in SCHEDULERS:
        raise UnknownSchedulerError(
            f"unknown scheduler {scheduler_name!r}; expected one of: {', '.join(SCHEDULERS)}"
        )
    return SCHEDULERS[scheduler_name].cls.__name__ not in _NOISE_OUTSIDE_GENERATOR


def _check_batch(requests: Sequence[GenerationRequest]) -> None:
    if not requests:
        raise ValueError("generate_batch needs at least one request")
    for req in requests:
        _check(req)
    first = batch_key_fields(requests[0])
    for index, req in enumerate(requests[1:], start=1):
        key = batch_key_fields(req)
        for name, ours, theirs in zip(_BATCH_KEY_NAMES, first, key, strict=True):
            if ours != theirs:
                raise ValueError(
                    f"request {index} cannot join the batch: its {name} is {theirs!r}, "
                    f"request 0's is {ours!r}"
                )
    scheduler = requests[0].scheduler
    if len(requests) > 1 and not batchable(scheduler):
        raise ValueError(
            f"scheduler {scheduler!r} draws its noise outside the per-sample generators: "
            "its requests must run one at a time"
        )


# The pipeline's keyword arguments for encode_prompt's four outputs, in its order.
_EMBEDDING_ARGS = (
    "prompt_embeds",
    "negative_prompt_embeds",
    "pooled_prompt_embeds",
    "negative_pooled_prompt_embeds",
)


def _encode_prompts(
    run: Any, requests: Sequence[GenerationRequest], device: torch.device, guidance: bool
) -> dict[str, torch.Tensor | None]:
    """The four prompt embeddings of the batch, request after request, each repeated
    ``samples`` times.

    One encode_prompt call per request: a None negative prompt must give zero
    embeddings (SDXL's force_zeros_for_empty_prompt) for that request only, which
    a list of negative prompts cannot say. Each request is encoded exactly as it
    is alone, so the text encoders add no batch-dependent rounding.
    """
    parts = [
        run.encode_prompt(
            prompt=req.prompt,
            device=device,
            num_images_per_prompt=req.samples,
            do_classifier_free_guidance=guidance,
            negative_prompt=req.negative_prompt,
        )
        for req in requests
    ]
    # encode_prompt returns (prompt, negative, pooled, negative pooled); without
    # guidance both negatives are None for every request.
    columns = zip(*parts, strict=True)
    return {
        name: None if column[0] is None else torch.cat(column)
        for name, column in zip(_EMBEDDING_ARGS, columns, strict=True)
    }


def generate_batch(
    pipe: StableDiffusionXLImg2ImgPipeline,
    requests: Sequence[GenerationRequest],
    on_step: Callable[[int, int], None] | None = None,
) -> list[GenerationResult]:
    """Run compatible ``requests`` in ONE pipeline call; one result per request, in order.

    Compatible: equal :func:`batch_key_fields` and a :func:`batchable` scheduler
    (ValueError otherwise). Each request keeps its own prompt, negative prompt,
    input image, samples and seed: its sample ``i`` is drawn from its own
    generator seeded ``seed + i`` (VAE encode sampling, initial noise and every
    scheduler noise draw are per-sample in diffusers), so it is the same image as
    when the request runs alone, up to float rounding: a batched UNet and VAE
    decode run other CPU kernels. Measured on the tiny model (CPU float32, 64² and
    128², all 12 schedulers, batches of up to 4 images): at most 1 in 0–255 pixel
    units, with under 0.5 % of values off at all; tests allow 2.

    ``on_step(done, total)`` runs after each denoising iteration, once per batch
    (not per request); ``total`` is the pipeline's own count, so second-order
    schedulers (two UNet evaluations per step) still end at done == total. An
    exception raised by ``on_step`` aborts the whole batch (no VAE decode) and
    propagates: that is how a job is cancelled.
    """
    _check_batch(requests)
    first = requests[0]
    base_config = remember_base_scheduler_config(pipe)
    scheduler = make_scheduler(first.scheduler, base_config)
    run = _as_any(pipe)
    device = run._execution_device
    # Request order, then sample order: the pipeline pairs generator k with the
    # k-th image and the k-th row of the prompt embeddings.
    generators = sample_generators(requests)
    sources = [
        req.image if req.image.mode == "RGB" else req.image.convert("RGB") for req in requests
    ]
    # The pipeline's own rule (its do_classifier_free_guidance property).
    guidance = first.guidance_scale > 1 and run.unet.config.time_cond_proj_dim is None

    clock = _PhaseClock(device)

    def callback(p: Any, i: int, t: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            on_step(i + 1, int(p.num_timesteps))
        if i + 1 == int(p.num_timesteps):
            clock.mark("denoise")  # the last step: what follows is the decode
        return kwargs

    with _GENERATE_LOCK:
        clock.start()  # not the wait for the lock
        original = run.scheduler
        # A fresh scheduler per call, put back afterwards: the pipe (and a later
        # save_pretrained) always keeps the model's own scheduler.
        run.scheduler = scheduler
        try:
            with torch.inference_mode(), tuning.unet_for(pipe, first.image.size):
                embeddings = _encode_prompts(run, requests, device, guidance)
                prompt_embeds = embeddings["prompt_embeds"]
                assert prompt_embeds is not None
                latents = _encode_inputs(run, requests, sources, generators, prompt_embeds.dtype)
                clock.mark("encode")
                output = run(
                    **embeddings,
                    image=latents,  # already encoded: the pipeline only adds the noise
                    strength=first.strength,
                    num_inference_steps=first.num_inference_steps,
                    guidance_scale=first.guidance_scale,
                    num_images_per_prompt=1,
                    generator=generators,
                    output_type="pt",  # stays on the device until it is uint8
                    callback_on_step_end=callback,
                )
                pixels: torch.Tensor = output.images
            steps_run = int(run.num_timesteps)
        finally:
            run.scheduler = original

    results = []
    start = 0
    for req in requests:
        mine = pixels[start : start + req.samples]
        start += req.samples
        if not bool(torch.isfinite(mine).all()):
            results.append(GenerationResult([], steps_run, failure=NON_FINITE_OUTPUT))
            continue
        results.append(GenerationResult(to_pil(mine), steps_run))
    clock.mark("decode")
    return [dataclasses.replace(result, timings=clock.phases) for result in results]


class _PhaseClock:
    """The time between marks, by the name of the phase each mark ends. On CUDA it waits
    for the device first: kernels run asynchronously, and the phase that launched them
    must be the one that pays for them."""

    def __init__(self, device: torch.device) -> None:
        self._device = device
        self._last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def start(self) -> None:
        self._last = time.perf_counter()

    def mark(self, phase: str) -> None:
        if self._device.type == "cuda":
            torch.cuda.synchronize(self._device)
        now = time.perf_counter()
        self.phases[phase] = now - self._last
        self._last = now


def sample_generators(requests: Sequence[GenerationRequest]) -> list[torch.Generator]:
    """One generator per image, request after request: sample ``i`` of a request seeded
    ``seed + i``.

    On the CPU, whatever the device: CUDA's random stream differs from the CPU's (and
    may between GPU models), so CPU generators are what makes a seed give the same image
    on any machine, up to the kernels' rounding (diffusers' own advice). The noise is
    drawn on the CPU and copied over: a few hundred KB per image, against seconds of
    denoising.
    """
    return [
        torch.Generator(device="cpu").manual_seed(req.seed + i)
        for req in requests
        for i in range(req.samples)
    ]


def _encode_inputs(
    run: Any,
    requests: Sequence[GenerationRequest],
    sources: Sequence[Image.Image],
    generators: Sequence[torch.Generator],
    dtype: torch.dtype,
) -> torch.Tensor:
    """The initial latents of every image: each request's input VAE-encoded ONCE, and
    each of its samples drawn from that one distribution with the sample's generator.

    Given 4-channel latents, the pipeline skips its own encode, which runs the VAE once
    per sample (up to 4 encodes of the same image per job). The draws and their order
    per generator are the pipeline's (the latent sample, then the noise), so the images
    are the same as when it encodes (tests/worker/test_pipeline.py).
    """
    vae = run.vae
    device = run._execution_device
    # As the pipeline does for a VAE that overflows in fp16 (force_upcast): encode in
    # fp32. load_pipeline clears force_upcast where it is not needed (bf16, fp32, an
    # fp16-safe VAE), so this round trip only remains for fp16 with SDXL's own VAE.
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(dtype=torch.float32)
    try:
        drawn = []
        made = iter(generators)
        for req, source in zip(requests, sources, strict=True):
            pixels = run.image_processor.preprocess(source).to(device=device, dtype=vae.dtype)
            distribution = vae.encode(pixels).latent_dist
            drawn += [distribution.sample(generator=next(made)) for _ in range(req.samples)]
    finally:
        if upcast:
            vae.to(dtype=torch.float16)
    latents = torch.cat(drawn).to(dtype)
    config = vae.config
    if getattr(config, "latents_mean", None) is not None and config.latents_std is not None:
        mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1).to(device, dtype)
        std = torch.tensor(config.latents_std).view(1, 4, 1, 1).to(device, dtype)
        return (latents - mean) * config.scaling_factor / std
    return config.scaling_factor * latents


def to_pil(pixels: torch.Tensor) -> list[Image.Image]:
    """Images in [0, 1] (N, 3, H, W), on any device: made uint8 there, so only a quarter
    of the bytes cross to the host, and in float32 (bf16 cannot round x·255 exactly)."""
    as_bytes = (pixels.float() * 255).round().clamp(0, 255).to(torch.uint8)
    return [Image.fromarray(a) for a in as_bytes.permute(0, 2, 3, 1).cpu().numpy()]


def generate(
    pipe: StableDiffusionXLImg2ImgPipeline,
    req: GenerationRequest,
    on_step: Callable[[int, int], None] | None = None,
) -> GenerationResult:
    """Run ``req`` on ``pipe``; ``on_step(done, total)`` after each denoising iteration.

    Sample ``i`` is drawn from its own generator seeded ``seed + i``, so any one
    sample is reproduced alone by ``samples=1, seed=seed + i``. An exception raised
    by ``on_step`` aborts the run (no VAE decode) and propagates: that is how a
    job is cancelled. ``total`` is the pipeline's own count, so second-order
    schedulers (two UNet evaluations per step) still end at done == total.

    A batch of one: a job alone and a job in a batch run the same code.
    """
    return generate_batch(pipe, [req], on_step)[0]
