"""A1111 sampler names mapped to diffusers schedulers with the settings that reproduce them.

A scheduler is built per request from the model's own scheduler config (betas, prediction type,
timestep spacing), so switching sampler never reloads the model.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from sfumato.errors import UnknownSampler


@dataclass(frozen=True)
class Sampler:
    name: str
    scheduler: str  # diffusers class name
    options: dict[str, Any] = field(default_factory=dict)
    stochastic: bool = False  # draws fresh noise every step (uses the per-image generators)


def _karras(name: str, base: Sampler) -> Sampler:
    return Sampler(name, base.scheduler, {**base.options, "use_karras_sigmas": True}, base.stochastic)


_DPM2M = Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2})
_DPM2M_SDE = Sampler("DPM++ 2M SDE", "DPMSolverMultistepScheduler",
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}, stochastic=True)
_DPM_SDE = Sampler("DPM++ SDE", "DPMSolverSDEScheduler", {}, stochastic=True)
_LMS = Sampler("LMS", "LMSDiscreteScheduler")
_DPM2 = Sampler("DPM2", "KDPM2DiscreteScheduler")
_DPM2A = Sampler("DPM2 a", "KDPM2AncestralDiscreteScheduler", {}, stochastic=True)
_DPM3M_SDE = Sampler("DPM++ 3M SDE", "DPMSolverMultistepScheduler",
                     {"algorithm_type": "sde-dpmsolver++", "solver_order": 3}, stochastic=True)

_ALL = [
    Sampler("Euler", "EulerDiscreteScheduler"),
    Sampler("Euler a", "EulerAncestralDiscreteScheduler", {}, stochastic=True),
    Sampler("Heun", "HeunDiscreteScheduler"),
    _LMS, _karras("LMS Karras", _LMS),
    _DPM2, _karras("DPM2 Karras", _DPM2),
    _DPM2A, _karras("DPM2 a Karras", _DPM2A),
    _DPM2M, _karras("DPM++ 2M Karras", _DPM2M),
    _DPM2M_SDE, _karras("DPM++ 2M SDE Karras", _DPM2M_SDE),
    _DPM_SDE, _karras("DPM++ SDE Karras", _DPM_SDE),
    _DPM3M_SDE, _karras("DPM++ 3M SDE Karras", _DPM3M_SDE),
    Sampler("DDIM", "DDIMScheduler", {"set_alpha_to_one": False}),
    Sampler("PLMS", "PNDMScheduler", {"skip_prk_steps": True}),
    Sampler("UniPC", "UniPCMultistepScheduler"),
    Sampler("DEIS", "DEISMultistepScheduler"),
    Sampler("LCM", "LCMScheduler", {}, stochastic=True),
    Sampler("TCD", "TCDScheduler", {}, stochastic=True),  # trajectory consistency distillation; eta = gamma
]
SAMPLERS: dict[str, Sampler] = {s.name: s for s in _ALL}
# flow matching (SD3, FLUX and the transformer families of pipelines/flow): the A1111 names that have a flow form,
# each on the model's shift; a family takes those whose `set_timesteps` accepts what its pipeline passes
# (pipelines.flow.FlowFamily.samplers)
_FLOW_SIGMAS = {"use_flow_sigmas": True, "prediction_type": "flow_prediction"}
FLOW_SAMPLERS: dict[str, Sampler] = {s.name: s for s in (
    Sampler("Euler", "FlowMatchEulerDiscreteScheduler"),
    Sampler("Heun", "FlowMatchHeunDiscreteScheduler"),
    Sampler("DPM++ 2M", "DPMSolverMultistepScheduler", {**_DPM2M.options, **_FLOW_SIGMAS}),
    Sampler("UniPC", "UniPCMultistepScheduler", dict(_FLOW_SIGMAS)),
)}
_SCHEDULER_ONLY_KEYS = ("skip_prk_steps", "set_alpha_to_one", "use_karras_sigmas", "algorithm_type", "solver_order",
                        "_class_name", "_diffusers_version")


def sampler_names(flow: bool = False) -> list[str]:
    return list((FLOW_SAMPLERS if flow else SAMPLERS).keys())


def get_sampler(name: str, flow: bool = False) -> Sampler:
    registry = FLOW_SAMPLERS if flow else SAMPLERS
    if name in registry:
        return registry[name]
    folded = {key.lower().replace("_", " "): value for key, value in registry.items()}
    if name.lower().replace("_", " ") in folded:
        return folded[name.lower().replace("_", " ")]
    raise UnknownSampler(f"unknown sampler {name!r}; choose one of: {', '.join(registry)}")


def sampler_has_own_noise(name: str | None, flow: bool = False) -> bool:
    """Whether the sampler draws noise from its own seeded source (one per batch, not per image)."""
    import diffusers

    if not name:
        return False
    cls = getattr(diffusers, get_sampler(name, flow).scheduler)
    return "noise_sampler_seed" in inspect.signature(cls.__init__).parameters


def make_scheduler(name: str, base_config: dict[str, Any], seed: int = 0, flow: bool = False,
                   timestep_spacing: str | None = None):
    """A fresh scheduler for sampler `name`, built on the model's own scheduler config.

    `seed` seeds samplers that keep their own noise source (DPM++ SDE's Brownian tree); `timestep_spacing`
    overrides the model's (trailing: Turbo, Lightning, Hyper-SD).
    """
    import diffusers

    sampler = get_sampler(name, flow)
    config = {k: v for k, v in base_config.items() if k not in _SCHEDULER_ONLY_KEYS}
    if flow:  # FlowMatch* schedulers call the shift `shift`, the multistep solvers `flow_shift`
        shift = config.get("shift", config.get("flow_shift", 1.0))
        config.update(shift=shift, flow_shift=shift)
    if timestep_spacing:
        config["timestep_spacing"] = timestep_spacing
    cls = getattr(diffusers, sampler.scheduler)
    accepted = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):  # no warning per request
        config = {k: v for k, v in config.items() if k in accepted or k.startswith("_")}
    options = dict(sampler.options)
    if "noise_sampler_seed" in inspect.signature(cls.__init__).parameters:
        options["noise_sampler_seed"] = seed
    return cls.from_config(config, **options)
