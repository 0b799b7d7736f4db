"""A tiny SDXL-architecture img2img pipeline with random weights, built offline.

It exercises the real code path (two CLIP text encoders, a ``text_time`` UNet, an
×8 VAE, the scheduler swap) in well under a second on a CPU, so tests and local
runs need neither a GPU nor a 4 GB download. Its images are noise: it is a test
fixture, never a model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
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

MARKER_FILE = "TINY_MODEL.txt"
_MODEL_INDEX = "model_index.json"

# Text encoders are 32 wide; the UNet attends to both concatenated (2 × 32 = 64).
_TEXT_WIDTH = 32
_MAX_TOKENS = 77

_MARKER_TEXT = """\
Tiny SDXL-architecture img2img pipeline with RANDOM weights (seed {seed}).

Built by worker.tiny_model.make_tiny_pipeline for tests and local development:
same architecture family as segmind/SSD-1B (two CLIP text encoders, a text_time
UNet, an x8 VAE) but a few MB of random parameters. It produces noise, not images.
Load it like any diffusers folder: set MODEL_ID to this folder's path.
"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable character table."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _write_tokenizer_files(directory: Path) -> tuple[Path, Path]:
    """A byte-level CLIP vocabulary with no merges: every character is a token.

    transformers 5's bare ``CLIPTokenizer()`` has a two-token vocabulary, so every
    prompt would encode the same and prompt-dependence could not be tested.
    """
    chars = sorted(_bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    vocab_file = directory / "vocab.json"
    merges_file = directory / "merges.txt"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_file.write_text("#version: 0.2\n", encoding="utf-8")
    return vocab_file, merges_file


def byte_level_tokenizer(scratch: Path) -> CLIPTokenizer:
    vocab_file, merges_file = _write_tokenizer_files(scratch)
    return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=_MAX_TOKENS)


def _text_config(tokenizer: CLIPTokenizer) -> CLIPTextConfig:
    # The special token ids must be the tokenizer's: CLIP pools the hidden state
    # at the end-of-text token, and with the default ids (49406/49407, outside
    # this vocabulary) it would pool position 0 for every prompt.
    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=_TEXT_WIDTH,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        projection_dim=_TEXT_WIDTH,
        max_position_embeddings=_MAX_TOKENS,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        # One resnet and one transformer layer per block: the tiny model's cost is
        # Python overhead per module (a 64² call is microseconds of arithmetic), so
        # depth is what makes every test job slow; SSD-1B's real depths are checked on
        # the full-size random model (worker/random_model.py).
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=1,
        cross_attention_dim=2 * _TEXT_WIDTH,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        # 6 time ids × 8 + the pooled 32-wide text embedding: SDXL base's layout
        # (the refiner's 5 ids would give 72 and fail with requires_aesthetics_score=False).
        projection_class_embeddings_input_dim=6 * 8 + _TEXT_WIDTH,
    )


def _vae() -> AutoencoderKL:
    # Four blocks = ×8 downsampling like SDXL's VAE; a ×2 VAE makes the UNet run on
    # 16× more latent pixels (a 256² call goes from ~1.5 s to over a minute).
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 64, 64),
        latent_channels=4,
        sample_size=128,
        scaling_factor=0.13025,
    )


def ssd1b_scheduler() -> EulerDiscreteScheduler:
    # segmind/SSD-1B's own scheduler config, so per-job swaps in tests start from
    # the same base values as in production.
    return EulerDiscreteScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type="epsilon",
        interpolation_type="linear",
        timestep_spacing="leading",
        steps_offset=1,
        use_karras_sigmas=False,
    )


def build_tiny_pipeline(seed: int = 0) -> StableDiffusionXLImg2ImgPipeline:
    """The tiny pipeline in memory; the same seed gives the same weights."""
    # fork_rng: building must not disturb the caller's global RNG stream.
    with tempfile.TemporaryDirectory() as scratch, torch.random.fork_rng(devices=[]):
        tokenizer = byte_level_tokenizer(Path(scratch))
        tokenizer_2 = byte_level_tokenizer(Path(scratch))
        text_config = _text_config(tokenizer)
        torch.manual_seed(seed)
        # Construction order is part of the determinism: each module draws its
        # random init from the one seeded stream.
        text_encoder = CLIPTextModel(text_config)
        text_encoder_2 = CLIPTextModelWithProjection(text_config)
        unet = _unet()
        vae = _vae()
    scheduler = ssd1b_scheduler()
    return assemble(vae, text_encoder, text_encoder_2, tokenizer, tokenizer_2, unet, scheduler)


def assemble(
    vae: AutoencoderKL,
    text_encoder: CLIPTextModel,
    text_encoder_2: CLIPTextModelWithProjection,
    tokenizer: CLIPTokenizer,
    tokenizer_2: CLIPTokenizer,
    unet: UNet2DConditionModel,
    scheduler: EulerDiscreteScheduler,
) -> StableDiffusionXLImg2ImgPipeline:
    """The img2img pipeline of these components, configured as SSD-1B's (base model
    time ids, zero embeddings for an empty negative prompt, no watermark)."""
    return StableDiffusionXLImg2ImgPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        requires_aesthetics_score=False,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def is_complete_pipeline_dir(path: Path) -> bool:
    """A saved diffusers pipeline: model_index.json and every component folder it names."""
    index_file = path / _MODEL_INDEX
    try:
        index = json.loads(index_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict):
        return False
    for name, value in index.items():
        is_component = (
            not name.startswith("_")
            and isinstance(value, list)
            and len(value) == 2
            and value[0] is not None
        )
        if is_component and not (path / name).is_dir():
            return False
    return True


def _current_umask() -> int:
    # os.umask can only be read by setting it; put it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _walk(root: Path) -> Iterator[Path]:
    yield root
    yield from sorted(root.rglob("*"))


def _apply_umask_permissions(root: Path) -> None:
    """Give the tree ordinary permissions.

    mkdtemp makes the top folder 0700 and safetensors writes files 0600 whatever
    the umask: a worker running as another user could not read the model.
    """
    mask = _current_umask()
    for path in _walk(root):
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def make_tiny_pipeline(out_dir: Path, seed: int = 0) -> Path:
    """Build and save the tiny pipeline into ``out_dir`` (returned); idempotent."""
    return save_new_pipeline(
        out_dir, lambda: build_tiny_pipeline(seed), _MARKER_TEXT.format(seed=seed)
    )


def save_new_pipeline(
    out_dir: Path,
    build: Callable[[], StableDiffusionXLImg2ImgPipeline],
    marker: str,
    variant: str | None = None,
) -> Path:
    """Save the pipeline ``build()`` makes into ``out_dir`` (returned), with a marker
    file saying what it is; idempotent.

    The folder appears atomically (built beside it, then renamed), so a crash
    never leaves a half-written model; a complete model already there is kept.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if is_complete_pipeline_dir(out_dir):
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise FileExistsError(
            f"{out_dir} exists and is not a complete diffusers pipeline; "
            "remove it or choose another folder"
        )
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Same parent folder: the final rename stays on one filesystem, hence atomic.
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.building-", dir=out_dir.parent))
    try:
        # Any: to mypy, diffusers' root names are its torch-less placeholders.
        pipe: Any = build()
        pipe.save_pretrained(staging, safe_serialization=True, variant=variant)
        (staging / MARKER_FILE).write_text(marker, encoding="utf-8")
        _apply_umask_permissions(staging)
        try:
            # Replaces out_dir only if it is missing or an empty folder.
            staging.rename(out_dir)
        except OSError:
            # Another process won the race: fine if what it left is complete.
            if not is_complete_pipeline_dir(out_dir):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
