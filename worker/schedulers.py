"""Segmind scheduler names → diffusers scheduler classes and their settings.

A name means the same sampler whatever model is loaded: every scheduler is built
from the model's own scheduler config (betas, timestep spacing, prediction type),
and only what the name itself defines is overridden on top of it.
"""

from __future__ import annotations

import copy
import inspect
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

# From the defining modules, not the package root: to mypy, diffusers' root names
# are the dummy placeholders it defines for installs without torch.
from diffusers.schedulers.scheduling_ddim import DDIMScheduler
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler
from diffusers.schedulers.scheduling_dpmsolver_multistep import DPMSolverMultistepScheduler
from diffusers.schedulers.scheduling_dpmsolver_singlestep import DPMSolverSinglestepScheduler
from diffusers.schedulers.scheduling_euler_ancestral_discrete import (
    EulerAncestralDiscreteScheduler,
)
from diffusers.schedulers.scheduling_euler_discrete import EulerDiscreteScheduler
from diffusers.schedulers.scheduling_heun_discrete import HeunDiscreteScheduler
from diffusers.schedulers.scheduling_k_dpm_2_ancestral_discrete import (
    KDPM2AncestralDiscreteScheduler,
)
from diffusers.schedulers.scheduling_k_dpm_2_discrete import KDPM2DiscreteScheduler
from diffusers.schedulers.scheduling_lms_discrete import LMSDiscreteScheduler
from diffusers.schedulers.scheduling_pndm import PNDMScheduler
from diffusers.schedulers.scheduling_unipc_multistep import UniPCMultistepScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import is_scipy_available

from common.schedulers import DEFAULT_SCHEDULER, SCHEDULER_NAMES, SECOND_ORDER_SCHEDULERS

__all__ = [
    "DEFAULT_SCHEDULER",
    "SCHEDULERS",
    "SCHEDULER_NAMES",
    "SchedulerSpec",
    "UnknownSchedulerError",
    "make_scheduler",
]

# Flags that pick the sigma schedule. A base config may carry one of them (a model
# shipped with a Karras scheduler, or our tiny model's default), and from_config
# would silently carry it over: "Euler" would then run Karras sigmas. So each of
# these is pinned to False unless the name's own overrides turn it on.
_SIGMA_SCHEDULE_FLAGS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


@dataclass(frozen=True)
class SchedulerSpec:
    """A diffusers scheduler class plus the config values the Segmind name implies."""

    cls: type[SchedulerMixin]
    overrides: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def order(self) -> int:
        """1, or 2 for schedulers that evaluate the UNet twice per step (Heun, DPM2)."""
        return int(getattr(self.cls, "order", 1))


def _spec(cls: type[SchedulerMixin], **overrides: Any) -> SchedulerSpec:
    return SchedulerSpec(cls, MappingProxyType(overrides))


# The table "Known diffusers equivalents" of the Segmind protocol notes.
SCHEDULERS: Mapping[str, SchedulerSpec] = MappingProxyType(
    {
        "DDIM": _spec(DDIMScheduler),
        "DPM Multi": _spec(DPMSolverMultistepScheduler),
        # lower_order_final=True is what diffusers switches to anyway (with a warning
        # on every job) when the final sigma is zero, as in every SDXL config.
        "DPM Single": _spec(DPMSolverSinglestepScheduler, lower_order_final=True),
        "Euler a": _spec(EulerAncestralDiscreteScheduler),
        "Euler": _spec(EulerDiscreteScheduler),
        "Heun": _spec(HeunDiscreteScheduler),
        "DPM2 a Karras": _spec(KDPM2AncestralDiscreteScheduler, use_karras_sigmas=True),
        "DPM2 Karras": _spec(KDPM2DiscreteScheduler, use_karras_sigmas=True),
        "LMS": _spec(LMSDiscreteScheduler),
        # PRK warm-up steps do not fit img2img's truncated schedules; every
        # diffusers SD pipeline uses PNDM with PLMS only.
        "PNDM": _spec(PNDMScheduler, skip_prk_steps=True),
        "DDPM": _spec(DDPMScheduler),
        "UniPC": _spec(UniPCMultistepScheduler),
    }
)

# The API validates against common.schedulers without importing torch; a name
# added on one side only would pass validation and then fail every job.
assert set(SCHEDULERS) == set(SCHEDULER_NAMES), sorted(set(SCHEDULERS) ^ set(SCHEDULER_NAMES))
# The scheduler charges second-order jobs twice the work (common/scheduler.py).
assert {n for n, s in SCHEDULERS.items() if s.order == 2} == SECOND_ORDER_SCHEDULERS


# LMS integrates its coefficients with scipy; without it every LMS job would fail
# with a NameError deep in diffusers. Refuse to start instead.
if not is_scipy_available():
    raise ImportError("the LMS scheduler needs scipy: install the worker extra (pip install scipy)")


class UnknownSchedulerError(ValueError):
    """The name is not one of the Segmind scheduler names."""


def _init_keys(cls: type[SchedulerMixin]) -> set[str]:
    return set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}


def make_scheduler(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """A fresh scheduler for the Segmind ``name``, built on the model's ``base_config``.

    A new instance every call: schedulers keep per-run state (step index, model
    outputs of multistep solvers), so one must never be shared between jobs. It is a
    copy of one built once per name and config: the Karras DPM2 schedulers compute
    their 1,000 training sigmas' timesteps in Python when built, 0.5 s of the worker's
    CPU per job (docs/performance.md "Scheduler construction"), while a copy takes
    about a millisecond.
    """
    try:
        spec = SCHEDULERS[name]
    except KeyError:
        raise UnknownSchedulerError(
            f"unknown scheduler {name!r}; expected one of: {', '.join(SCHEDULER_NAMES)}"
        ) from None
    key = (name, json.dumps(dict(base_config), sort_keys=True, default=str))
    with _PROTOTYPES_LOCK:
        prototype = _PROTOTYPES.get(key)
        if prototype is None:
            prototype = _PROTOTYPES[key] = _build(spec, base_config)
    return copy.deepcopy(prototype)


# Built schedulers, never handed out: one per (name, base config). A worker serves one
# model, so this holds at most one per name.
_PROTOTYPES: dict[tuple[str, str], SchedulerMixin] = {}
_PROTOTYPES_LOCK = threading.Lock()


def _build(spec: SchedulerSpec, base_config: Mapping[str, Any]) -> SchedulerMixin:
    accepted = _init_keys(spec.cls)
    overrides = {flag: False for flag in _SIGMA_SCHEDULE_FLAGS if flag in accepted}
    overrides.update(spec.overrides)
    # from_config comes from ConfigMixin, which every scheduler class also inherits
    # but SchedulerMixin does not declare.
    factory: Any = spec.cls
    scheduler: SchedulerMixin = factory.from_config(dict(base_config), **overrides)
    return scheduler
