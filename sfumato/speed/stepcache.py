"""Step caching for UNets: DeepCache (Ma et al. 2023, "DeepCache: Accelerating Diffusion Models for Free").

Adjacent sampling steps change the UNet's deep, low-resolution features very little. Every `interval`-th UNet call
runs in full and remembers each module's output; the calls in between run only the outer `branch` of the U — the
first down-path layers and their mirror on the up path — and every deeper module (down layers, the mid block, up
layers, upsamplers) hands back what it returned at the last full call. The live up-path layers then take the cached
deep feature plus fresh skip connections, which is DeepCache's "shallow branch".

A *layer* is one ResNet (with its attention, when the block has one), a downsampler, or `conv_in`; the down path
has as many layers as the up path, and up layer k from the end takes down layer k's skip connection. `branch = b`
keeps down layers 0..b and the last b+1 up layers (an upsampler runs when the layer before it does). b = 0 is
DeepCache's finest branch: only `conv_in` and the last up layer run between full calls.

Installed per sampling pass on the UNet instance (each wrapped module's `forward`), removed afterwards; nothing in
diffusers is patched. A call whose input shape differs from the last full call's runs in full.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch

from sfumato.errors import InvalidRequest
from sfumato.speed.wrapping import after_each_call, cloned, forwards_replaced

MAX_INTERVAL = 10


@dataclass(frozen=True)
class StepCacheSettings:
    interval: int = 1  # a full UNet call every `interval` calls (1: no caching)
    branch: int = 0  # the down/up layers that stay live between full calls (0: the outermost only)

    @property
    def enabled(self) -> bool:
        return self.interval > 1

    def check(self) -> StepCacheSettings:
        for name, value, low, high in (("cache_interval", self.interval, 1, MAX_INTERVAL),
                                       ("cache_branch", self.branch, 0, 64)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise InvalidRequest(f"{name} must be an integer in {low}..{high}, got {value!r}")
        return self


def _layers(blocks, up: bool) -> list[list[torch.nn.Module]]:
    """The res-sample layers of a UNet path, in execution order, each as the modules that make it up (an up
    block's upsampler is attached to its last layer)."""
    layers = []
    for block in blocks:
        attentions = getattr(block, "attentions", None) or []
        for j, resnet in enumerate(block.resnets):
            layers.append([resnet] + ([attentions[j]] if j < len(attentions) else []))
        samplers = getattr(block, "upsamplers" if up else "downsamplers", None) or []
        if up:
            layers[-1].extend(samplers)
        else:
            layers.extend([sampler] for sampler in samplers)
    return layers


def skipped_modules(unet, branch: int) -> list[torch.nn.Module]:
    """The modules a cached call does not run, for `branch` (see the module docstring)."""
    down = [[]] + _layers(unet.down_blocks, up=False)  # layer 0 is conv_in, always live
    up = _layers(unet.up_blocks, up=True)
    if len(down) != len(up):
        raise InvalidRequest(f"step caching needs a U-shaped UNet ({len(down)} down vs {len(up)} up layers)")
    if branch >= len(down) - 1:
        raise InvalidRequest(f"cache_branch must be below {len(down) - 1} for this UNet, got {branch}")
    skipped = [m for layer in down[branch + 1:] for m in layer]
    skipped += [unet.mid_block] if unet.mid_block is not None else []
    skipped += [m for layer in up[:len(up) - branch - 1] for m in layer]
    return skipped


class UNetStepCache:
    """DeepCache on one UNet: `installed()` around a sampling pass, `before_call(shape)` before each UNet call.

    One object per (UNet, branch) is kept and reused pass after pass (`for_unet`), with its wrapper functions made
    once: a compiled UNet then sees the same objects every time and keeps its two compiled variants (full and
    cached call) instead of compiling again for every generation."""

    def __init__(self, unet, settings: StepCacheSettings):
        self.settings = settings.check()
        self.unet = unet
        self.modules = skipped_modules(unet, settings.branch)
        self.outputs: dict[int, object] = {}
        self.originals: dict[int, object] = {}
        self.wrappers = [self._wrap(module) for module in self.modules]
        self.reset(settings)

    @classmethod
    def for_unet(cls, unet, settings: StepCacheSettings) -> UNetStepCache:
        kept = unet.__dict__.setdefault("_sfumato_step_caches", {})
        if settings.branch not in kept:
            kept[settings.branch] = cls(unet, settings)
        cache = kept[settings.branch]
        cache.reset(settings.check())
        return cache

    def reset(self, settings: StepCacheSettings) -> None:
        self.settings = settings
        self.outputs.clear()
        self.calls = self.full_calls = 0
        self.full_shape: tuple | None = None
        self.reuse = False

    def before_call(self, shape: tuple) -> None:
        self.reuse = (self.calls % self.settings.interval != 0 and shape == self.full_shape
                      and len(self.outputs) == len(self.modules))
        if not self.reuse:
            self.full_shape, self.full_calls = shape, self.full_calls + 1
        self.calls += 1

    def _wrap(self, module: torch.nn.Module):
        key = id(module)

        def forward(*args, **kwargs):
            if self.reuse:
                return self.outputs[key]
            out = self.originals[key](*args, **kwargs)
            self.outputs[key] = out
            return out

        return forward

    def keep(self) -> None:
        """After a call of a UNet whose calls reuse their memory (CUDA graphs): own copies of a full call's outputs."""
        if not self.reuse:
            self.outputs = {key: cloned(out) for key, out in self.outputs.items()}

    @contextlib.contextmanager
    def installed(self) -> Iterator[UNetStepCache]:
        for module in self.modules:
            self.originals[id(module)] = module.forward  # the class's, or e.g. an offload hook's
        try:
            with forwards_replaced(list(zip(self.modules, self.wrappers))), after_each_call(self.unet, self.keep):
                yield self
        finally:
            self.outputs.clear()


def step_cache_for(unet, settings: StepCacheSettings | None):
    """A `UNetStepCache` context for this pass, or a no-op one when caching is off."""
    if settings is None or not settings.enabled:
        return contextlib.nullcontext(None)
    return UNetStepCache.for_unet(unet, settings).installed()
