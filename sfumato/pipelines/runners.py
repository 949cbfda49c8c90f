"""How each kind of model runs: one table, so the engine and the resolver dispatch by lookup, not by if/elif.

A kind is what a family's denoiser asks of the engine: `unet` (SD1/2/XL and the ldm families, our own denoise loop),
`flow` (SD3, FLUX: their diffusers pipelines with our noise and schedules), `transformer` (PixArt, DiT) and
`pipeline` (LDM-VQ, Kandinsky). Each entry says which request rules apply to it, how one batch is generated, and
whether jobs of different requests may share a batch. A new kind is one entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from sfumato.errors import InvalidRequest
from sfumato.models.families import Family
from sfumato.pipelines.dit import check_dit_request, generate_dit_batch
from sfumato.pipelines.flow import check_flow_request, generate_flow_batch
from sfumato.pipelines.tasks import BatchPrompts, generate_batch
from sfumato.pipelines.video import check_video_request
from sfumato.pipelines.vq import check_vq_request, generate_vq_batch
from sfumato.requests import GenerationRequest


@dataclass
class BatchJob:
    """Everything one batch needs, whatever runs it."""

    model: Any  # LoadedModel
    encoder: Any  # PromptEncoder (UNet kinds)
    request: GenerationRequest  # the batch's request (batch_count 1)
    seeds: list[int]
    subseeds: list[int]
    progress: Any
    prompts: list[str]  # each image's own prompt
    controls: Any = None  # pipelines.tasks.Controls
    upscaler: Callable | None = None  # name -> a loaded upscaler


@dataclass(frozen=True)
class Runner:
    kind: str
    check: Callable[[str, GenerationRequest], None]  # (family name, resolved request): refuse what the kind can't do
    generate: Callable[[BatchJob], list]  # one batch of PIL images
    shares_batches: bool  # jobs of different requests may run as one batch (the server's batching)


def _check_unet(family: str, request: GenerationRequest) -> None:
    if request.cache_threshold > 0:
        raise InvalidRequest("cache_threshold (adaptive first-block cache) is for transformer models (SD3, FLUX); "
                             "UNet models take cache_interval")


def _unet_batch(job: BatchJob) -> list:
    texts = BatchPrompts(job.prompts, [job.request.negative_prompt] * len(job.seeds), job.request.cfg_scale)
    return generate_batch(job.model, job.encoder, job.request, job.seeds, job.subseeds, job.progress, texts,
                          job.controls, job.upscaler)


def _no_images(job: BatchJob) -> list:
    raise InvalidRequest(f"{job.model.family} is a video model: make clips with sfumato animate --mode video-model")


RUNNERS = {
    "unet": Runner("unet", _check_unet, _unet_batch, shares_batches=True),
    "flow": Runner("flow", check_flow_request, lambda job: generate_flow_batch(
        job.model, job.request, job.seeds, job.subseeds, job.progress, job.prompts, job.upscaler,
        job.controls.units if job.controls else None), shares_batches=False),
    "transformer": Runner("transformer", check_dit_request, lambda job: generate_dit_batch(
        job.model, job.request, job.seeds, job.subseeds, job.progress, job.prompts), shares_batches=False),
    "pipeline": Runner("pipeline", check_vq_request, lambda job: generate_vq_batch(
        job.model, job.request, job.seeds, job.subseeds, job.progress, job.prompts), shares_batches=False),
    # video families: resolved for `animation.video_model` clips (Engine.resolve(video=True)); never an image batch
    "video": Runner("video", check_video_request, _no_images, shares_batches=False),
}


def runner_for(family: Family) -> Runner:
    """The entry of a family: by its `video` or `flow` spec, else by its denoiser."""
    if family.video is not None:
        return RUNNERS["video"]
    if family.flow is not None:  # through its diffusers pipeline with our seeds (HunyuanDiT too: DDPM-trained)
        return RUNNERS["flow"]
    return RUNNERS[family.denoiser]
