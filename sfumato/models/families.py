"""Model families: their defaults and the config skeletons used to load single files offline.

The skeletons are the configs of the reference checkpoints (SD 1.5, SD 2.1-768-v, SDXL base 1.0,
SDXL refiner 1.0) written as data, so a single `.safetensors` file never needs the network for
its configs (diffusers' `from_single_file` fetches them from the hub).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}


@dataclass(frozen=True)
class FlowFamily:
    """How a family runs through its diffusers pipelines with sfumato's seeds (pipelines.flow): flow-matching
    transformers, and HunyuanDiT (`flow=False`)."""

    packed: bool  # latents packed 2x2 into a sequence (FLUX), sizes then multiples of twice the VAE factor
    negative: bool  # takes a negative prompt (FLUX's guidance is distilled: no)
    edits: dict[bool, str]  # masked? -> its Img2Img / Inpaint pipeline class (missing: no such edit)
    # its ControlNet pipeline and multi-ControlNet classes (None: no ControlNets; a None multi class: one unit only)
    control: tuple[str, str | None] | None
    control_windows: bool = True  # its ControlNet pipeline takes guidance start/end (Z-Image's: no)
    fill: str | None = None  # the pipeline of its inpainting ("Fill") transformers, told apart by their channels
    markup: bool = True  # A1111 emphasis and prompt editing (`ScheduledEmbeddings`; its features are SD3's or FLUX's)
    # "ours": our per-image noise (variation seeds) handed as `latents`; "generators": the pipeline draws it from one
    # CPU generator per image, seeded with the image's seed (its latent layout is its own: Qwen's 5D frames, ...)
    noise: str = "ours"
    cfg: str = "guidance_scale"  # the keyword of its classifier-free guidance scale (Qwen-Image: true_cfg_scale)
    multiple: int = 1  # image sizes are multiples of this many latent pixels (its patch)
    # the samplers whose schedulers take what its pipeline passes to set_timesteps (None: every one of its registry)
    samplers: tuple[str, ...] | None = ("Euler",)
    call: tuple[tuple[str, object], ...] = ()  # fixed keyword arguments of its pipelines
    reference: bool = False  # its pipeline reads a reference image (`image`): FLUX.1 Kontext edits by instruction
    flow: bool = True  # flow matching (False: a discrete diffusion schedule and A1111's samplers: HunyuanDiT)
    area_sized: bool = False  # the pipeline sizes every image to `default_sample_size`'s area (HiDream): set from
    # the request's, so the image has the size asked for


@dataclass(frozen=True)
class VideoFamily:
    """How a video family makes clips through its diffusers pipelines (pipelines.video)."""

    text_to_video: tuple[str, ...]  # its text-to-video pipeline classes (empty: none)
    image_to_video: tuple[str, ...]  # its image-to-video pipeline classes
    same_weights: bool  # one transformer does both (LTX): the image-to-video pipeline is built over the loaded one
    frame_step: int  # frame counts are 1 + a multiple of this (its VAE's temporal compression)
    size_multiple: int  # width and height are multiples of this
    prompt: bool = True  # takes a text prompt (SVD: no, the image alone; a prompt given is not used)


@dataclass(frozen=True)
class Family:
    name: str
    native_size: int
    default_sampler: str = "DPM++ 2M Karras"
    default_steps: int = 25
    default_cfg_scale: float = 7.0
    prediction_type: str = "epsilon"
    pipeline_class: str = "StableDiffusionPipeline"
    skeleton: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    denoiser: str = "unet"  # "transformer" / "pipeline": the family runs through its own diffusers pipeline
    # (pipelines/flow and dit; pipelines/vq)
    # the diffusers pipeline class names (or name prefixes) in a folder's model_index.json that mean this family: the
    # longest matching prefix wins (`family_for_pipeline`), so detecting a new family is this one field
    pipelines: tuple[str, ...] = ()
    flow: FlowFamily | None = None  # runs through its diffusers pipelines with our seeds (pipelines.flow)
    video: VideoFamily | None = None  # a video family: clips through `sfumato animate --mode video-model`


def _clip_text(hidden: int, layers: int, heads: int, act: str, projection: int) -> dict[str, Any]:
    return {
        "vocab_size": 49408,
        "hidden_size": hidden,
        "intermediate_size": hidden * 4,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "max_position_embeddings": 77,
        "hidden_act": act,
        "projection_dim": projection,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
        "layer_norm_eps": 1e-5,
    }


def _vae(sample_size: int, scaling_factor: float, force_upcast: bool = False) -> dict[str, Any]:
    return {
        "in_channels": 3,
        "out_channels": 3,
        "latent_channels": 4,
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "act_fn": "silu",
        "sample_size": sample_size,
        "scaling_factor": scaling_factor,
        "force_upcast": force_upcast,
    }


_SD_UNET_BLOCKS = {
    "block_out_channels": [320, 640, 1280, 1280],
    "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
    "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
    "layers_per_block": 2,
    "in_channels": 4,
    "out_channels": 4,
}

SD1 = Family(
    name="sd1",
    native_size=512,
    skeleton={
        "unet": {**_SD_UNET_BLOCKS, "sample_size": 64, "cross_attention_dim": 768, "attention_head_dim": 8},
        "vae": _vae(512, 0.18215),
        "text_encoder": _clip_text(768, 12, 12, "quick_gelu", 768),
        "tokenizer": {"pad_token": "<|endoftext|>"},
        "scheduler": {**SD_BETAS, "_class_name": "PNDMScheduler", "skip_prk_steps": True, "set_alpha_to_one": False,
                      "steps_offset": 1, "clip_sample": False, "prediction_type": "epsilon"},
    },
)

SD2 = Family(
    name="sd2",
    native_size=768,
    prediction_type="v_prediction",
    skeleton={
        "unet": {**_SD_UNET_BLOCKS, "sample_size": 96, "cross_attention_dim": 1024,
                 "attention_head_dim": [5, 10, 20, 20], "use_linear_projection": True},
        "vae": _vae(768, 0.18215),
        "text_encoder": _clip_text(1024, 23, 16, "gelu", 512),
        "tokenizer": {"pad_token": "!"},
        "scheduler": {**SD_BETAS, "_class_name": "PNDMScheduler", "skip_prk_steps": True, "set_alpha_to_one": False,
                      "steps_offset": 1, "clip_sample": False, "prediction_type": "v_prediction"},
    },
)

_SDXL_SCHEDULER = {**SD_BETAS, "_class_name": "EulerDiscreteScheduler", "steps_offset": 1,
                   "timestep_spacing": "leading", "interpolation_type": "linear", "prediction_type": "epsilon"}

SDXL = Family(
    name="sdxl",
    native_size=1024,
    default_cfg_scale=6.0,
    pipeline_class="StableDiffusionXLPipeline",
    skeleton={
        "unet": {
            "block_out_channels": [320, 640, 1280],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "layers_per_block": 2, "in_channels": 4, "out_channels": 4, "sample_size": 128,
            "transformer_layers_per_block": [1, 2, 10], "attention_head_dim": [5, 10, 20],
            "cross_attention_dim": 2048, "use_linear_projection": True, "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2816,
        },
        "vae": _vae(1024, 0.13025, force_upcast=True),
        "text_encoder": _clip_text(768, 12, 12, "quick_gelu", 768),
        "text_encoder_2": _clip_text(1280, 32, 20, "gelu", 1280),
        "tokenizer": {"pad_token": "<|endoftext|>"},
        "tokenizer_2": {"pad_token": "!"},
        "scheduler": _SDXL_SCHEDULER,
        "pipeline": {"force_zeros_for_empty_prompt": True},
    },
)

SDXL_REFINER = Family(
    name="sdxl-refiner",
    native_size=1024,
    default_cfg_scale=6.0,
    pipeline_class="StableDiffusionXLImg2ImgPipeline",
    skeleton={
        "unet": {
            "block_out_channels": [384, 768, 1536, 1536],
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "layers_per_block": 2, "in_channels": 4, "out_channels": 4, "sample_size": 128,
            "transformer_layers_per_block": 4, "attention_head_dim": [6, 12, 24, 24],
            "cross_attention_dim": 1280, "use_linear_projection": True, "addition_embed_type": "text_time",
            "addition_time_embed_dim": 256, "projection_class_embeddings_input_dim": 2560,
        },
        "vae": _vae(1024, 0.13025, force_upcast=True),
        "text_encoder_2": _clip_text(1280, 32, 20, "gelu", 1280),
        "tokenizer_2": {"pad_token": "!"},
        "scheduler": _SDXL_SCHEDULER,
        "pipeline": {"requires_aesthetics_score": True, "force_zeros_for_empty_prompt": False},
    },
)

# A latent-diffusion UNet conditioned on any transformers text encoder (token states for cross-attention,
# the pooled sentence vector through the UNet's class embedding); its defaults live in the model's
# `sfumato.json`. The embedded default model "sfumato-emoji" is one.
LDM = Family(name="ldm", native_size=32, default_sampler="DPM++ 2M", default_steps=20, default_cfg_scale=5.0)

SD3 = Family(name="sd3", native_size=1024, default_sampler="Euler", default_steps=28, default_cfg_scale=7.0,
             prediction_type="flow", pipeline_class="StableDiffusion3Pipeline", denoiser="transformer",
             pipelines=("StableDiffusion3",),
             flow=FlowFamily(packed=False, negative=True, edits={False: "StableDiffusion3Img2ImgPipeline",
                                                                 True: "StableDiffusion3InpaintPipeline"},
                             control=("StableDiffusion3ControlNetPipeline", "SD3MultiControlNetModel"),
                             samplers=("Euler", "Heun", "DPM++ 2M", "UniPC")))
FLUX = Family(name="flux", native_size=1024, default_sampler="Euler", default_steps=28, default_cfg_scale=3.5,
              prediction_type="flow", pipeline_class="FluxPipeline", denoiser="transformer", pipelines=("Flux",),
              flow=FlowFamily(packed=True, negative=False, edits={False: "FluxImg2ImgPipeline",
                                                                  True: "FluxInpaintPipeline"},
                              control=("FluxControlNetPipeline", "FluxMultiControlNetModel"), fill="FluxFillPipeline",
                              multiple=2, samplers=("Euler", "DPM++ 2M", "UniPC")))
# FLUX.1 Kontext: a FLUX transformer that also reads a reference image's tokens: edit by instruction
FLUX_KONTEXT = Family(name="flux-kontext", native_size=1024, default_sampler="Euler", default_steps=28,
                      default_cfg_scale=2.5, prediction_type="flow", pipeline_class="FluxKontextPipeline",
                      denoiser="transformer", pipelines=("FluxKontext",),
                      flow=FlowFamily(packed=True, negative=False, edits={}, control=None, markup=False, multiple=2,
                                      samplers=("Euler", "DPM++ 2M", "UniPC"), reference=True,
                                      call=(("_auto_resize", False),)))
# Chroma (Lodestone Rock's FLUX.1-schnell derivative): T5 only, real CFG with a negative prompt, packed latents
CHROMA = Family(name="chroma", native_size=1024, default_sampler="Euler", default_steps=26, default_cfg_scale=4.0,
                prediction_type="flow", pipeline_class="ChromaPipeline", denoiser="transformer", pipelines=("Chroma",),
                flow=FlowFamily(packed=True, negative=True, edits={False: "ChromaImg2ImgPipeline",
                                                                   True: "ChromaInpaintPipeline"},
                                control=None, markup=False, multiple=2, samplers=("Euler", "UniPC")))
# the transformer families that run through their pipelines' own latent layout and encoders (plain prompts)
_PLAIN = dict(packed=False, negative=True, control=None, markup=False, noise="generators", multiple=2)

# The 2025-26 transformer families through their diffusers pipelines (their `flow` spec says how each
# is driven); defaults are their model cards'
QWEN_IMAGE = Family(name="qwen-image", native_size=1024, default_sampler="Euler", default_steps=50,
                    default_cfg_scale=4.0, prediction_type="flow", pipeline_class="QwenImagePipeline",
                    denoiser="transformer", pipelines=("QwenImagePipeline", "QwenImageImg2Img", "QwenImageInpaint"),
                    flow=FlowFamily(**{**_PLAIN, "control": ("QwenImageControlNetPipeline",
                                                             "QwenImageMultiControlNetModel")},
                                    edits={False: "QwenImageImg2ImgPipeline", True: "QwenImageInpaintPipeline"},
                                    cfg="true_cfg_scale", samplers=("Euler", "UniPC")))
Z_IMAGE = Family(name="z-image", native_size=1024, default_sampler="Euler", default_steps=9, default_cfg_scale=1.0,
                 prediction_type="flow", pipeline_class="ZImagePipeline", denoiser="transformer",
                 pipelines=("ZImagePipeline", "ZImageImg2Img", "ZImageInpaint"),  # Z-Image-Turbo's 9 steps, no CFG
                 flow=FlowFamily(**{**_PLAIN, "control": ("ZImageControlNetPipeline", None)}, control_windows=False,
                                 edits={False: "ZImageImg2ImgPipeline", True: "ZImageInpaintPipeline"}))
LUMINA2 = Family(name="lumina2", native_size=1024, default_sampler="Euler", default_steps=30, default_cfg_scale=4.0,
                 prediction_type="flow", pipeline_class="Lumina2Pipeline", denoiser="transformer",
                 pipelines=("Lumina2",), flow=FlowFamily(**_PLAIN, edits={}, samplers=("Euler", "UniPC")))
SANA = Family(name="sana", native_size=1024, default_sampler="DPM++ 2M", default_steps=20, default_cfg_scale=4.5,
              prediction_type="flow", pipeline_class="SanaPipeline", denoiser="transformer",
              pipelines=("SanaPipeline",),
              flow=FlowFamily(**{**_PLAIN, "multiple": 1}, edits={}, samplers=("DPM++ 2M", "Euler", "Heun", "UniPC"),
                              call=(("use_resolution_binning", False), ("clean_caption", False))))
AURAFLOW = Family(name="auraflow", native_size=1024, default_sampler="Euler", default_steps=50, default_cfg_scale=3.5,
                  prediction_type="flow", pipeline_class="AuraFlowPipeline", denoiser="transformer",
                  pipelines=("AuraFlow",),
                  flow=FlowFamily(**_PLAIN, edits={}, samplers=("Euler", "Heun", "DPM++ 2M", "UniPC")))
COGVIEW4 = Family(name="cogview4", native_size=1024, default_sampler="Euler", default_steps=50, default_cfg_scale=3.5,
                  prediction_type="flow", pipeline_class="CogView4Pipeline", denoiser="transformer",
                  pipelines=("CogView4Pipeline",), flow=FlowFamily(**_PLAIN, edits={}))
HIDREAM = Family(name="hidream", native_size=1024, default_sampler="Euler", default_steps=50, default_cfg_scale=5.0,
                 prediction_type="flow", pipeline_class="HiDreamImagePipeline", denoiser="transformer",
                 pipelines=("HiDreamImage",),
                 flow=FlowFamily(**_PLAIN, edits={}, samplers=("Euler", "UniPC"), area_sized=True))
# Video families (animation.video_model: `sfumato animate --mode video-model`); their clips run through their diffusers
# pipelines on their own schedulers. Wan 2.1/2.2 (text- and image-to-video folders), LTX-Video (one transformer for
# both), Stable Video Diffusion (image-to-video)
WAN = Family(name="wan", native_size=832, default_sampler="UniPC", default_steps=40, default_cfg_scale=5.0,
             prediction_type="flow", pipeline_class="WanPipeline", denoiser="video",
             pipelines=("WanPipeline", "WanImageToVideo"),
             video=VideoFamily(("WanPipeline",), ("WanImageToVideoPipeline",), same_weights=False, frame_step=4,
                               size_multiple=16))
LTX_VIDEO = Family(name="ltx-video", native_size=704, default_sampler="Euler", default_steps=40, default_cfg_scale=3.0,
                   prediction_type="flow", pipeline_class="LTXPipeline", denoiser="video",
                   pipelines=("LTXPipeline", "LTXImageToVideo"),
                   video=VideoFamily(("LTXPipeline",), ("LTXImageToVideoPipeline",), same_weights=True, frame_step=8,
                                     size_multiple=32))
SVD = Family(name="svd", native_size=1024, default_sampler="Euler", default_steps=25, default_cfg_scale=3.0,
             prediction_type="v_prediction", pipeline_class="StableVideoDiffusionPipeline", denoiser="video",
             pipelines=("StableVideoDiffusion",),
             video=VideoFamily((), ("StableVideoDiffusionPipeline",), same_weights=False, frame_step=1, size_multiple=8,
                               prompt=False))
# HunyuanDiT (Tencent): DDPM-trained v-prediction DiT over bilingual BERT + mT5 states (pipelines/flow drives it)
HUNYUANDIT = Family(name="hunyuandit", native_size=1024, default_sampler="DDIM", default_steps=50,
                    default_cfg_scale=5.0, prediction_type="v_prediction", pipeline_class="HunyuanDiTPipeline",
                    denoiser="transformer", pipelines=("HunyuanDiTPipeline",),
                    flow=FlowFamily(**_PLAIN, edits={}, flow=False, samplers=None,  # plain timesteps: every sampler
                                    call=(("use_resolution_binning", False),)))
# DiT families from diffusers folders: PixArt-α/Σ (T5 text encoder, learned-sigma transformer) and class-conditional
# DiT (ImageNet labels as prompts; the image size is the model's)
PIXART = Family(name="pixart", native_size=1024, default_sampler="DPM++ 2M", default_steps=20, default_cfg_scale=4.5,
                pipeline_class="PixArtSigmaPipeline", denoiser="transformer", pipelines=("PixArt",))
DIT = Family(name="dit", native_size=256, default_sampler="DPM++ 2M", default_steps=25, default_cfg_scale=4.0,
             pipeline_class="DiTPipeline", denoiser="transformer", pipelines=("DiTPipeline",))

# Vector-quantised autoencoder families through their diffusers pipelines (pipelines/vq): CompVis' LDM text-to-image
# (VQModel + LDMBert + UNet) and Kandinsky 2.2 (CLIP image prior + UNet + MoVQ decoder)
LDM_VQ = Family(name="ldm-vq", native_size=256, default_sampler="DDIM", default_steps=50, default_cfg_scale=6.0,
                pipeline_class="LDMTextToImagePipeline", denoiser="pipeline", pipelines=("LDMTextToImagePipeline",))
KANDINSKY22 = Family(name="kandinsky22", native_size=768, default_sampler="DDIM", default_steps=50,
                     default_cfg_scale=4.0, pipeline_class="KandinskyV22CombinedPipeline", denoiser="pipeline",
                     pipelines=("KandinskyV22CombinedPipeline",))

FAMILIES = {f.name: f for f in (SD1, SD2, SDXL, SDXL_REFINER, LDM, SD3, FLUX, FLUX_KONTEXT, CHROMA, QWEN_IMAGE, Z_IMAGE,
                                LUMINA2,
                                SANA, AURAFLOW, COGVIEW4, HIDREAM, HUNYUANDIT, PIXART, DIT, LDM_VQ, KANDINSKY22, WAN,
                                LTX_VIDEO, SVD)}


def family_for_pipeline(pipeline: str) -> Family | None:
    """The family whose `pipelines` has the longest prefix of this diffusers pipeline class name (None: no family
    claims it; the UNet families are told apart by their configs, `models.detect`)."""
    matches = [(len(prefix), family) for family in FAMILIES.values() for prefix in family.pipelines
               if pipeline.startswith(prefix)]
    return max(matches, key=lambda m: m[0])[1] if matches else None
UNET_FAMILIES = ("sd1", "sd2", "sdxl", "sdxl-refiner", "ldm")
TINY_FAMILIES = (*FAMILIES, "wan-i2v")  # `sfumato make-tiny` builds each (models.tiny; wan-i2v: Wan image-to-video)
