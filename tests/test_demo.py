"""`make demo` and `make up MODEL_ID=...` (cli/demo.py, cli/stack.py): the demo writes its
input beside its outputs and says when they come from the tiny random model; a hub
model that cannot be had offline fails at once with the worker's message, leaving
nothing running."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image

from cli import stack
from cli.demo import run_demo
from devstack.ports import free_port
from devstack.process import pidfile_path, pidfile_process_alive

# Each test starts the whole local stack.
pytestmark = pytest.mark.e2e


def test_the_demo_writes_its_input_beside_the_tiny_models_outputs(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    # The tiny model the session built (`model make-tiny`, which `ensure_tiny_model`
    # runs), where the demo looks for it: building it again would only repeat that.
    shutil.copytree(tiny_model_dir, tmp_path / "stack" / "models" / "tiny")
    outcome = run_demo(tmp_path / "stack", tmp_path / "out", api_port=free_port())
    assert outcome.tiny_model  # the CLI then says the outputs are noise
    assert outcome.input.parent == outcome.outputs[0].parent
    assert Image.open(outcome.input).size == (256, 256)
    assert [Image.open(p).size for p in outcome.outputs] == [(256, 256), (256, 256)]
    from worker.tiny_model import MARKER_FILE  # torch: imported where it runs

    assert stack.TINY_MODEL_MARKER == MARKER_FILE


def test_a_hub_model_not_to_be_had_offline_fails_fast_and_leaves_nothing_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    state = tmp_path / "stack"
    with pytest.raises(stack.StackError) as failed:
        stack.up(state, api_port=free_port(), model_id="segmind/SSD-1B")
    message = str(failed.value)
    assert "worker exited" in message and "HF_HUB_OFFLINE" in message and "MODEL_ID" in message
    for name in (stack.API, stack.WORKER, stack.BACKGROUND):
        assert not pidfile_process_alive(pidfile_path(state.resolve(), name))
