"""load_pipeline / generate on the tiny model: schedulers, seeds, progress, errors."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline
from huggingface_hub import constants as hf_constants
from PIL import Image

from common.schedulers import DEFAULT_SCHEDULER, SCHEDULER_NAMES
from tests.support.loopback_http import silent_server
from tests.support.worker_requests import make_request
from worker import model_source
from worker import pipeline as pipeline_module
from worker.pipeline import (
    ModelLoadError,
    generate,
    load_pipeline,
)
from worker.schedulers import SCHEDULERS, UnknownSchedulerError, make_scheduler
from worker.tiny_model import make_tiny_pipeline

SIZE = 64

# diffusers' K-schedulers hand torch tensors to numpy, which emits a NumPy 2
# DeprecationWarning per call: thousands per run, and recording them made this
# file several times slower. They are diffusers' to fix, not ours.
pytestmark = pytest.mark.filterwarnings("ignore:__array:DeprecationWarning")


@pytest.fixture(scope="module")
def pipe(model_dir: Path) -> StableDiffusionXLImg2ImgPipeline:
    return load_pipeline(str(model_dir), device="cpu")


@pytest.fixture(scope="module")
def source() -> Image.Image:
    rng = np.random.default_rng(0)
    gradient = np.linspace(0, 255, SIZE, dtype=np.float32)[None, :, None]
    pixels = np.clip(gradient + rng.normal(0, 40, (SIZE, SIZE, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# ---------------------------------------------------------------- schedulers


def test_scheduler_names_match_the_torch_free_list() -> None:
    assert set(SCHEDULERS) == set(SCHEDULER_NAMES)
    assert len(SCHEDULER_NAMES) == 12
    assert DEFAULT_SCHEDULER == "DPM2 Karras"


def test_sigma_schedule_of_the_base_config_does_not_leak(
    pipe: StableDiffusionXLImg2ImgPipeline,
) -> None:
    karras_base = {**pipe.scheduler.config, "use_karras_sigmas": True}
    assert make_scheduler("Euler", karras_base).config.use_karras_sigmas is False
    assert make_scheduler("DPM2 Karras", pipe.scheduler.config).config.use_karras_sigmas is True
    # What the name does not define comes from the model's own config.
    assert make_scheduler("DDIM", pipe.scheduler.config).config.timestep_spacing == "leading"


@pytest.mark.parametrize("name", ["DPM2 Karras", "DPM Multi"])
def test_each_job_gets_a_scheduler_of_its_own(
    pipe: StableDiffusionXLImg2ImgPipeline, name: str
) -> None:
    # make_scheduler copies one it built before (worker/schedulers.py): a copy must
    # start as a fresh build does, and a job's run must not reach the next job's.
    first = make_scheduler(name, pipe.scheduler.config)
    fresh_sigmas = first.sigmas.clone()
    first.set_timesteps(5)
    first.step_index_before = first.sigmas.clone()  # a job's own attribute, too
    second = make_scheduler(name, pipe.scheduler.config)
    assert second is not first
    assert not hasattr(second, "step_index_before")
    assert torch.equal(second.sigmas, fresh_sigmas)
    assert not torch.equal(first.sigmas, fresh_sigmas)
    other_config = {**pipe.scheduler.config, "timestep_spacing": "trailing"}
    assert make_scheduler(name, other_config).config.timestep_spacing == "trailing"


def test_unknown_scheduler_is_refused(pipe: StableDiffusionXLImg2ImgPipeline) -> None:
    with pytest.raises(UnknownSchedulerError, match="DPM2 Karras"):
        make_scheduler("Euler b", pipe.scheduler.config)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_runs_end_to_end(
    pipe: StableDiffusionXLImg2ImgPipeline, source: Image.Image, name: str
) -> None:
    request = make_request(source, scheduler=name, samples=2)
    result = generate(pipe, request)
    assert len(result.images) == 2
    assert all(image.size == source.size and image.mode == "RGB" for image in result.images)
    assert result.steps_run >= int(request.num_inference_steps * request.strength) > 0
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"  # the model's own, restored


def test_a_scheduler_swap_does_not_leak_into_the_next_call(
    pipe: StableDiffusionXLImg2ImgPipeline, source: Image.Image
) -> None:
    original = pipe.scheduler
    first = generate(pipe, make_request(source, scheduler="Euler"))
    generate(pipe, make_request(source, scheduler="DPM2 a Karras"))
    again = generate(pipe, make_request(source, scheduler="Euler"))
    assert pipe.scheduler is original
    assert first.images[0].tobytes() == again.images[0].tobytes()


# ---------------------------------------------------------------- seeds and prompts


def test_same_seed_gives_identical_pixels(
    pipe: StableDiffusionXLImg2ImgPipeline, source: Image.Image
) -> None:
    # An ancestral scheduler draws fresh noise every step: the strictest case.
    request = make_request(source, scheduler="Euler a", samples=2)
    first, second = generate(pipe, request), generate(pipe, request)
    assert [i.tobytes() for i in first.images] == [i.tobytes() for i in second.images]


def test_different_prompts_and_seeds_give_different_pixels(
    pipe: StableDiffusionXLImg2ImgPipeline, source: Image.Image
) -> None:
    base = pixels(generate(pipe, make_request(source)).images[0])
    other_prompt = pixels(generate(pipe, make_request(source, prompt="a red bicycle")).images[0])
    other_seed = pixels(generate(pipe, make_request(source, seed=1235)).images[0])
    assert np.abs(base - other_prompt).mean() > 1
    assert np.abs(base - other_seed).mean() > 5


@pytest.mark.parametrize("scheduler", ["Euler a", "DPM2 Karras"])
def test_sample_i_is_reproduced_alone_with_seed_plus_i(
    pipe: StableDiffusionXLImg2ImgPipeline, source: Image.Image, scheduler: str
) -> None:
    batch = generate(pipe, make_request(source, scheduler=scheduler, samples=3, strength=0.5))
    unrelated = pixels(batch.images[0])
    for i, image in enumerate(batch.images):
        alone = generate(
            pipe, make_request(source, scheduler=scheduler, strength=0.5, seed=1234 + i)
        )
        diff = np.abs(pixels(image) - pixels(alone.images[0]))
        # Same noise, same result; a batch of 3 runs other float kernels than a
        # batch of 1, which can move a pixel by one rounding step, never more.
        assert diff.max() <= 2, (i, diff.max())
        assert diff.mean() < 0.1
        if i > 0:  # while another seed changes the picture altogether
            assert np.abs(pixels(image) - unrelated).mean() > 5


# ---------------------------------------------------------------- progress and abort


@pytest.mark.parametrize(("scheduler", "order"), [("Euler", 1), ("Heun", 2)])
def test_on_step_counts_reach_the_pipelines_total(
    pipe: StableDiffusionXLImg2ImgPipeline, source: Image.Image, scheduler: str, order: int
) -> None:
    assert SCHEDULERS[scheduler].order == order
    calls: list[tuple[int, int]] = []
    request = make_request(source, scheduler=scheduler)
    result = generate(pipe, request, lambda d, t: calls.append((d, t)))
    total = pipe.num_timesteps
    assert calls == [(done, total) for done in range(1, total + 1)]
    assert result.steps_run == total
    steps = int(request.num_inference_steps * request.strength)
    # Second-order schedulers evaluate the UNet about twice per step.
    assert total == steps if order == 1 else steps < total <= 2 * steps


class Cancelled(Exception):
    pass


def test_an_exception_from_on_step_aborts_the_run(
    pipe: StableDiffusionXLImg2ImgPipeline, source: Image.Image
) -> None:
    original = pipe.scheduler
    calls: list[int] = []

    def cancel_at_two(done: int, total: int) -> None:
        calls.append(done)
        if done == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        generate(pipe, make_request(source, scheduler="DPM2 Karras"), cancel_at_two)
    assert calls == [1, 2]
    assert pipe.scheduler is original
    # The pipe stays usable.
    assert len(generate(pipe, make_request(source)).images) == 1


# ---------------------------------------------------------------- inputs


def test_non_rgb_input_is_accepted(
    pipe: StableDiffusionXLImg2ImgPipeline, source: Image.Image
) -> None:
    result = generate(pipe, make_request(source.convert("RGBA")))
    assert result.images[0].size == source.size


def test_a_request_with_no_denoising_step_is_refused(
    pipe: StableDiffusionXLImg2ImgPipeline, source: Image.Image
) -> None:
    with pytest.raises(ValueError, match="no denoising step"):
        generate(pipe, make_request(source, num_inference_steps=20, strength=0.04))


# ---------------------------------------------------------------- load errors


def test_a_missing_folder_raises_a_helpful_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError) as info:
        load_pipeline(str(tmp_path / "nope"), device="cpu")
    message = str(info.value)
    assert "does not exist" in message
    assert "MODEL_ID" in message and "make-tiny" in message


def test_a_folder_that_is_not_a_pipeline_raises(tmp_path: Path) -> None:
    (tmp_path / "unet").mkdir()
    with pytest.raises(ModelLoadError, match=r"model_index\.json"):
        load_pipeline(str(tmp_path), device="cpu")


def test_a_broken_pipeline_folder_raises(model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_bytes((model_dir / "model_index.json").read_bytes())
    with pytest.raises(ModelLoadError, match="cannot load the pipeline"):
        load_pipeline(str(broken), device="cpu")


def test_cuda_without_cuda_is_a_load_error(
    model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ModelLoadError, match="no CUDA device"):
        load_pipeline(str(model_dir), device="cuda")


def test_uncached_hub_id_fails_at_once_when_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Offline, nothing is even tried on the network: "at once" means no connection."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    connections: list[object] = []
    real_connect = socket.socket.connect

    def connect(self: socket.socket, address: object) -> None:
        connections.append(address)
        real_connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        load_pipeline("ssd-img2img-tests/not-a-real-model", device="cpu")
    assert connections == []


@pytest.fixture
def silent_hub() -> Iterator[str]:
    """A host that accepts connections and never answers: the case where
    huggingface_hub (no timeout) would wait forever."""
    with silent_server() as port:
        yield f"http://127.0.0.1:{port}"


def test_unreachable_hub_fails_fast(monkeypatch: pytest.MonkeyPatch, silent_hub: str) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "ENDPOINT", silent_hub)
    monkeypatch.setattr(model_source, "HUB_PROBE_TIMEOUT_S", 0.5)

    outcome: list[BaseException | None] = []

    def load() -> None:
        try:
            load_pipeline("ssd-img2img-tests/not-a-real-model", device="cpu")
            outcome.append(None)
        except BaseException as exc:
            outcome.append(exc)

    # In a thread so that a regression shows as a failure, not a hung test run: the
    # probe gives up after its 0.5 s (huggingface_hub alone would wait forever), so the
    # generous join below only ever fails on a hang.
    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    thread.join(60)
    assert not thread.is_alive(), "load_pipeline hung on a silent hub"
    assert isinstance(outcome[0], ModelLoadError)
    assert "cannot reach the Hugging Face hub" in str(outcome[0])
    assert "waited at most 0.5 s" in str(outcome[0])


# ------------------------------------------------------------- encode, seeds, pixels


@pytest.mark.parametrize("scheduler", ["Euler a", "DPM2 Karras"])
def test_each_input_is_encoded_once_and_gives_the_plain_pipelines_images(
    pipe: StableDiffusionXLImg2ImgPipeline,
    source: Image.Image,
    monkeypatch: pytest.MonkeyPatch,
    scheduler: str,
) -> None:
    """Three samples of one job: ONE VAE encode (the plain pipeline makes three), and
    the very images the plain pipeline gives for the same seeds and generators."""
    run: Any = pipe
    request = make_request(source, samples=3, seed=77, scheduler=scheduler, strength=0.5)
    encodes: list[int] = []
    real_encode = run.vae.encode

    def counted(*args: Any, **kwargs: Any) -> Any:
        encodes.append(1)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(run.vae, "encode", counted)
    ours = generate(pipe, request).images
    assert len(encodes) == 1

    encodes.clear()
    original = run.scheduler
    run.scheduler = make_scheduler(scheduler, run.scheduler.config)
    try:
        plain = run(
            prompt=request.prompt,
            image=source,
            strength=request.strength,
            num_inference_steps=request.num_inference_steps,
            guidance_scale=request.guidance_scale,
            num_images_per_prompt=3,
            generator=[torch.Generator("cpu").manual_seed(77 + i) for i in range(3)],
        ).images
    finally:
        run.scheduler = original
    assert len(encodes) == 3
    for mine, theirs in zip(ours, plain, strict=True):
        assert np.array_equal(pixels(mine), pixels(theirs))  # same kernels: bit for bit


def test_seeds_use_cpu_generators_one_per_sample(source: Image.Image) -> None:
    requests = [make_request(source, samples=2, seed=10), make_request(source, seed=50)]
    generators = pipeline_module.sample_generators(requests)
    assert [g.device.type for g in generators] == ["cpu"] * 3
    assert [g.initial_seed() for g in generators] == [10, 11, 50]


def test_non_finite_pixels_fail_the_request_instead_of_black_images(
    model_dir: Path, source: Image.Image
) -> None:
    broken: Any = load_pipeline(str(model_dir), device="cpu")
    with torch.no_grad():
        broken.vae.post_quant_conv.weight.fill_(float("nan"))  # the decode overflows
    result = generate(broken, make_request(source, samples=2))
    assert result.failure == pipeline_module.NON_FINITE_OUTPUT
    assert result.images == []


def test_pixels_become_uint8_images_as_diffusers_makes_them() -> None:
    values = torch.rand(2, 3, 16, 24, generator=torch.Generator().manual_seed(3))
    made = pipeline_module.to_pil(values)
    expected = (values.permute(0, 2, 3, 1).numpy() * 255).round().astype("uint8")
    assert [image.size for image in made] == [(24, 16), (24, 16)]
    assert all((np.asarray(m) == e).all() for m, e in zip(made, expected, strict=True))


# ------------------------------------------------------------------------ precision


def test_dtype_auto_is_bfloat16_on_cuda_and_float32_on_a_cpu() -> None:
    resolve = pipeline_module.resolve_dtype
    assert resolve("auto", torch.device("cuda")) == torch.bfloat16
    assert resolve("auto", torch.device("cpu")) == torch.float32
    assert resolve("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ModelLoadError, match="MODEL_DTYPE"):
        resolve("float8", torch.device("cpu"))


def test_bfloat16_runs_the_vae_without_upcasting(model_dir: Path, source: Image.Image) -> None:
    pipe: Any = load_pipeline(str(model_dir), device="cpu", dtype_name="bfloat16")
    assert pipe.unet.dtype == pipe.vae.dtype == torch.bfloat16
    assert pipe.vae.config.force_upcast is False  # no fp32 round trip per encode/decode
    result = generate(pipe, make_request(source, samples=2))
    assert result.failure is None and len(result.images) == 2
    assert pipe.vae.dtype == torch.bfloat16  # never cast away


def test_float16_keeps_the_upcast_of_its_own_vae_but_not_of_a_safe_one(
    model_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    own: Any = load_pipeline(str(model_dir), device="cpu", dtype_name="float16")
    assert own.vae.config.force_upcast is True
    assert "VAE_ID" in caplog.text  # says how to avoid the round trips

    other = make_tiny_pipeline(tmp_path / "other", seed=1)  # its VAE stands in for a safe one
    safe: Any = load_pipeline(str(model_dir), device="cpu", dtype_name="float16", vae_id=str(other))
    assert safe.vae.config.force_upcast is False
    expected = StableDiffusionXLImg2ImgPipeline.from_pretrained(str(other)).vae
    theirs = next(iter(expected.parameters())).to(torch.float16)
    assert torch.equal(next(iter(safe.vae.parameters())), theirs)
    with pytest.raises(ModelLoadError, match="VAE_ID"):
        load_pipeline(str(model_dir), device="cpu", vae_id=str(tmp_path / "missing"))
