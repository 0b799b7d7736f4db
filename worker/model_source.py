"""Where the model comes from, checked without torch: a worker whose MODEL_ID cannot
be found stops in about a second with what to set, instead of after the 15-20 s of CPU
that importing torch and diffusers costs (worker/__main__.py runs this first)."""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.request
from pathlib import Path

from huggingface_hub import constants as hf_constants
from huggingface_hub import try_to_load_from_cache

HOW_TO_FIX = (
    "Set MODEL_ID to a Hugging Face hub id such as segmind/SSD-1B (downloading it needs "
    "network access; offline, pre-fill the Hugging Face cache and set HF_HUB_OFFLINE=1) "
    "or to a local diffusers pipeline folder, e.g. one built with "
    "`ssd-img2img model make-tiny DIR`."
)

# How long the hub may take to answer one request before we call it unreachable.
# huggingface_hub 1.x+ uses no timeout at all: against a host that accepts the
# connection but never answers (a firewall, a dead proxy) from_pretrained hangs
# forever; with DNS failing it gives up at once.
HUB_PROBE_TIMEOUT_S = 5.0

# "name" or "owner/name" as the hub accepts them.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


class ModelLoadError(RuntimeError):
    """The model could not be loaded; the message says what to set."""


def hub_offline() -> bool:
    # huggingface_hub reads HF_HUB_OFFLINE once, at import; honour a later setting too.
    env = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return bool(hf_constants.HF_HUB_OFFLINE) or env.strip().upper() in {"1", "ON", "YES", "TRUE"}


def looks_like_path(model_id: str) -> bool:
    return (
        model_id.startswith(("/", "./", "../", "~", "."))
        or "\\" in model_id
        or model_id.count("/") > 1
        or not _HUB_ID.match(model_id)
    )


def local_folder(model_id: str) -> Path | None:
    """The pipeline folder MODEL_ID names, None for a hub id; raises
    :class:`ModelLoadError` for a folder that is missing or holds no pipeline."""
    folder = Path(model_id).expanduser()
    if not (folder.exists() or looks_like_path(model_id)):
        return None
    if not folder.exists():
        raise ModelLoadError(
            f"model folder {model_id!r} ({folder.absolute()}) does not exist. {HOW_TO_FIX}"
        )
    if not folder.is_dir():
        raise ModelLoadError(f"MODEL_ID {str(folder)!r} is not a folder. {HOW_TO_FIX}")
    if not (folder / "model_index.json").is_file():
        raise ModelLoadError(
            f"{folder} is not a diffusers pipeline folder (it has no model_index.json). "
            f"{HOW_TO_FIX}"
        )
    return folder


def probe_hub(model_id: str, timeout_s: float | None = None) -> None:
    """Fail fast when the hub cannot be reached; any HTTP answer counts as reachable.

    A 401/404 is left for from_pretrained to explain (gated repos need a token,
    and the hub answers 401 for missing repos to anonymous callers).
    """
    if timeout_s is None:
        timeout_s = HUB_PROBE_TIMEOUT_S
    url = f"{hf_constants.ENDPOINT.rstrip('/')}/api/models/{model_id}"
    request = urllib.request.Request(url, method="HEAD")  # noqa: S310 (http(s) endpoint)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s):  # noqa: S310
            return
    except urllib.error.HTTPError:
        return
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused, DNS
        reason = getattr(exc, "reason", exc)
        raise ModelLoadError(
            f"cannot reach the Hugging Face hub at {hf_constants.ENDPOINT} to fetch "
            f"{model_id!r} ({reason}; waited at most {timeout_s:g} s), and it is not fully "
            f"in the local cache. {HOW_TO_FIX}"
        ) from exc


def check_model_source(model_id: str) -> None:
    """Raise :class:`ModelLoadError` when MODEL_ID can certainly not be loaded: empty, a
    folder without a pipeline, or a hub id absent from the cache while offline or while
    the hub cannot be reached. Whether a cached or downloadable model loads is for the
    pipeline to find out."""
    model_id = model_id.strip()
    if not model_id:
        raise ModelLoadError(f"MODEL_ID is empty. {HOW_TO_FIX}")
    if local_folder(model_id) is not None:
        return
    if isinstance(try_to_load_from_cache(model_id, "model_index.json"), str):
        return
    if hub_offline():
        raise ModelLoadError(
            f"{model_id!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set, "
            f"so it cannot be downloaded. {HOW_TO_FIX}"
        )
    probe_hub(model_id)
