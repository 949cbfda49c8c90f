"""Sampler names -> diffusers schedulers; seeds, noise and variation seeds."""

from sfumato.sampling.noise import batch_noise, generators_for, slerp
from sfumato.sampling.samplers import SAMPLERS, make_scheduler, sampler_names

__all__ = ["SAMPLERS", "batch_noise", "generators_for", "make_scheduler", "sampler_names", "slerp"]
