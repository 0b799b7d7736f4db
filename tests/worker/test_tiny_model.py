"""The tiny random-weight pipeline: deterministic, loadable, written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionXLImg2ImgPipeline

from worker import tiny_model
from worker.tiny_model import MARKER_FILE, is_complete_pipeline_dir, make_tiny_pipeline


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_pipeline(tmp_path_factory.mktemp("tiny") / "model")


def test_build_is_byte_identical_for_the_same_seed(model_dir: Path, tmp_path: Path) -> None:
    again = make_tiny_pipeline(tmp_path / "again")
    first, second = _hashes(model_dir), _hashes(again)
    assert first == second
    assert any(name.endswith(".safetensors") for name in first)
    assert MARKER_FILE in first


def test_another_seed_gives_other_weights(model_dir: Path, tmp_path: Path) -> None:
    other = make_tiny_pipeline(tmp_path / "other", seed=1)
    unet = "unet/diffusion_pytorch_model.safetensors"
    assert _hashes(other)[unet] != _hashes(model_dir)[unet]


def test_build_leaves_the_callers_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    make_tiny_pipeline(tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_from_pretrained_loads_an_sdxl_img2img_pipeline(model_dir: Path) -> None:
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(model_dir, add_watermarker=False)
    assert isinstance(pipe, StableDiffusionXLImg2ImgPipeline)
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.unet.config.cross_attention_dim == 64
    assert pipe.vae_scale_factor == 8
    assert pipe.config.requires_aesthetics_score is False
    assert pipe.config.force_zeros_for_empty_prompt is True
    assert pipe.watermark is None
    index = json.loads((model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLImg2ImgPipeline"
    assert "random weights" in (model_dir / MARKER_FILE).read_text().lower()


def test_tokenizers_tell_prompts_apart(model_dir: Path) -> None:
    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(model_dir, add_watermarker=False)
    for tokenizer in (pipe.tokenizer, pipe.tokenizer_2):
        cat, dog = tokenizer("a cat").input_ids, tokenizer("a dog").input_ids
        assert cat != dog
        assert cat[0] == tokenizer.bos_token_id and cat[-1] == tokenizer.eos_token_id
        # CLIP pools at the end-of-text token: its id must be the tokenizer's.
        assert pipe.text_encoder_2.config.eos_token_id == tokenizer.eos_token_id


def test_files_follow_the_umask_not_0600(model_dir: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    for path in [model_dir, *model_dir.rglob("*")]:
        expected = (0o777 if path.is_dir() else 0o666) & ~mask
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_existing_complete_model_is_left_alone(model_dir: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in model_dir.rglob("*")}
    assert make_tiny_pipeline(model_dir, seed=99) == model_dir
    assert {p: p.stat().st_mtime_ns for p in model_dir.rglob("*")} == before


def test_an_empty_folder_is_filled(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    assert is_complete_pipeline_dir(make_tiny_pipeline(tmp_path / "empty"))


def test_a_folder_with_other_content_is_refused(tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a complete diffusers pipeline"):
        make_tiny_pipeline(tmp_path / "busy")


def test_a_crash_mid_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(*args: object, **kwargs: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(StableDiffusionXLImg2ImgPipeline, "save_pretrained", crash)
    with pytest.raises(OSError, match="disk full"):
        make_tiny_pipeline(tmp_path / "model")
    assert list(tmp_path.iterdir()) == []


def test_losing_the_race_to_another_builder_is_fine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model"
    real_build = tiny_model.build_tiny_pipeline

    def build_while_another_process_finishes_first(
        seed: int = 0,
    ) -> StableDiffusionXLImg2ImgPipeline:
        monkeypatch.setattr(tiny_model, "build_tiny_pipeline", real_build)
        make_tiny_pipeline(out, seed)  # the "other process"
        return real_build(seed)

    monkeypatch.setattr(
        tiny_model, "build_tiny_pipeline", build_while_another_process_finishes_first
    )
    assert make_tiny_pipeline(out) == out
    assert is_complete_pipeline_dir(out)
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
