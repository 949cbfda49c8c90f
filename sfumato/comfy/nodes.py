"""The ComfyUI core nodes sfumato runs: their inputs and outputs (what `/object_info` shows and `graph.validate`
checks). What each node does is in `comfy.executor`.

An input is a link type (MODEL, CLIP, CONDITIONING, ...) or a widget: INT / FLOAT with default, min and max, STRING,
BOOLEAN, or a choice: fixed values (sampler names, schedulers) or one of the server's lists (`listed`: checkpoints,
loras, vae, controlnet, upscale_models, input images), filled in by whoever asks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

MAX_SEED = 0xFFFFFFFFFFFFFFFF
MAX_RESOLUTION = 16384

# ComfyUI sampler and scheduler names -> sfumato's (see comfy.executor.sampler_for)
SAMPLERS = {"euler": "Euler", "euler_ancestral": "Euler a", "heun": "Heun", "dpm_2": "DPM2",
            "dpm_2_ancestral": "DPM2 a", "lms": "LMS", "dpmpp_2m": "DPM++ 2M", "dpmpp_sde": "DPM++ SDE",
            "dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE", "ddim": "DDIM", "uni_pc": "UniPC",
            "deis": "DEIS", "lcm": "LCM", "tcd": "TCD"}
SCHEDULERS = ("normal", "karras", "exponential", "sgm_uniform", "simple", "ddim_uniform", "beta")
UPSCALE_METHODS = ("nearest-exact", "bilinear", "area", "bicubic", "bislerp", "lanczos")


@dataclass(frozen=True)
class Input:
    type: str  # a link type, or INT / FLOAT / STRING / BOOLEAN / COMBO
    default: Any = None
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    listed: str | None = None  # COMBO over one of the server's lists
    multiline: bool = False

    def check(self, value: Any) -> tuple[str, str, str] | None:
        """(error type, message, details) for a widget value that cannot be used, else None."""
        if self.type in ("INT", "FLOAT"):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or \
                    (self.type == "INT" and not float(value).is_integer()):
                return "invalid_input_type", "Failed to convert an input value to a " + self.type + " value", \
                    repr(value)
            if self.low is not None and value < self.low:
                return "value_smaller_than_min", "Value smaller than min", f"{value} < {self.low}"
            if self.high is not None and value > self.high:
                return "value_bigger_than_max", "Value bigger than max", f"{value} > {self.high}"
        elif self.type == "STRING" and not isinstance(value, str):
            return "invalid_input_type", "Failed to convert an input value to a STRING value", repr(value)
        elif self.type == "BOOLEAN" and not isinstance(value, bool):
            return "invalid_input_type", "Failed to convert an input value to a BOOLEAN value", repr(value)
        elif self.type == "COMBO" and self.choices and value not in self.choices:
            return "value_not_in_list", "Value not in list", f"'{value}' not in {list(self.choices)}"
        elif self.type == "COMBO" and not isinstance(value, str):
            return "value_not_in_list", "Value not in list", repr(value)
        elif self.type not in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"):
            return "required_input_missing", "Required input is missing", f"expects a link to a {self.type} output"
        return None

    def schema(self, lists: dict[str, list[str]]) -> list:
        """The `/object_info` form of this input."""
        if self.type == "COMBO":
            return [list(self.choices) if not self.listed else list(lists.get(self.listed, []))]
        options: dict[str, Any] = {}
        if self.default is not None:
            options["default"] = self.default
        if self.low is not None:
            options["min"] = self.low
        if self.high is not None:
            options["max"] = self.high
        if self.type == "FLOAT":
            options["step"] = 0.01
        if self.multiline:
            options["multiline"] = True
        return [self.type, options] if options else [self.type]


@dataclass(frozen=True)
class Node:
    inputs: dict[str, Input]
    outputs: tuple[str, ...]
    output: bool = False  # an output node (SaveImage, PreviewImage)
    optional: frozenset[str] = field(default_factory=frozenset)
    category: str = "sfumato"
    output_names: tuple[str, ...] | None = None

    def info(self, name: str, lists: dict[str, list[str]]) -> dict[str, Any]:
        required = {k: v.schema(lists) for k, v in self.inputs.items() if k not in self.optional}
        optional = {k: v.schema(lists) for k, v in self.inputs.items() if k in self.optional}
        inputs: dict[str, Any] = {"required": required}
        if optional:
            inputs["optional"] = optional
        return {"input": inputs, "input_order": {k: list(v) for k, v in inputs.items()}, "output": list(self.outputs),
                "output_is_list": [False] * len(self.outputs), "output_name": list(self.output_names or self.outputs),
                "name": name, "display_name": name, "description": "", "python_module": "nodes",
                "category": self.category, "output_node": self.output}


def _int(default, low, high) -> Input:
    return Input("INT", default, low, high)


def _float(default, low, high) -> Input:
    return Input("FLOAT", default, low, high)


SEED = _int(0, 0, MAX_SEED)
STEPS = _int(20, 1, 10000)
CFG = _float(8.0, 0.0, 100.0)
SAMPLER = Input("COMBO", choices=tuple(SAMPLERS))
SCHEDULER = Input("COMBO", choices=SCHEDULERS)
SIDE = _int(512, 16, MAX_RESOLUTION)
M, C, V, COND, LATENT, IMAGE, MASK = "MODEL", "CLIP", "VAE", "CONDITIONING", "LATENT", "IMAGE", "MASK"

_SAMPLING = {"model": Input(M), "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": SAMPLER,
             "scheduler": SCHEDULER, "positive": Input(COND), "negative": Input(COND), "latent_image": Input(LATENT),
             "denoise": _float(1.0, 0.0, 1.0)}
_EMPTY = {"width": SIDE, "height": SIDE, "batch_size": _int(1, 1, 4096)}

NODES: dict[str, Node] = {
    "CheckpointLoaderSimple": Node({"ckpt_name": Input("COMBO", listed="checkpoints")}, (M, C, V), category="loaders"),
    "VAELoader": Node({"vae_name": Input("COMBO", listed="vae")}, (V,), category="loaders"),
    "UNETLoader": Node({"unet_name": Input("COMBO", listed="diffusion_models"),
                        "weight_dtype": Input("COMBO", choices=("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2"))},
                       (M,), category="advanced/loaders"),
    "CLIPLoader": Node({"clip_name": Input("COMBO", listed="text_encoders"),
                        "type": Input("COMBO", choices=("stable_diffusion", "sd3", "flux")),
                        "device": Input("COMBO", choices=("default", "cpu"))}, (C,), optional=frozenset({"device"}),
                       category="advanced/loaders"),
    "DualCLIPLoader": Node({"clip_name1": Input("COMBO", listed="text_encoders"),
                            "clip_name2": Input("COMBO", listed="text_encoders"),
                            "type": Input("COMBO", choices=("sdxl", "sd3", "flux")),
                            "device": Input("COMBO", choices=("default", "cpu"))}, (C,), optional=frozenset({"device"}),
                           category="advanced/loaders"),
    "LoraLoader": Node({"model": Input(M), "clip": Input(C), "lora_name": Input("COMBO", listed="loras"),
                        "strength_model": _float(1.0, -100.0, 100.0), "strength_clip": _float(1.0, -100.0, 100.0)},
                       (M, C), category="loaders"),
    "LoraLoaderModelOnly": Node({"model": Input(M), "lora_name": Input("COMBO", listed="loras"),
                                 "strength_model": _float(1.0, -100.0, 100.0)}, (M,), category="loaders"),
    "ControlNetLoader": Node({"control_net_name": Input("COMBO", listed="controlnet")}, ("CONTROL_NET",),
                             category="loaders"),
    "UpscaleModelLoader": Node({"model_name": Input("COMBO", listed="upscale_models")}, ("UPSCALE_MODEL",),
                               category="loaders"),
    "CLIPTextEncode": Node({"text": Input("STRING", multiline=True), "clip": Input(C)}, (COND,),
                           category="conditioning"),
    "CLIPSetLastLayer": Node({"clip": Input(C), "stop_at_clip_layer": _int(-1, -24, -1)}, (C,),
                             category="conditioning"),
    "ConditioningCombine": Node({"conditioning_1": Input(COND), "conditioning_2": Input(COND)}, (COND,),
                                category="conditioning"),
    "FluxGuidance": Node({"conditioning": Input(COND), "guidance": _float(3.5, 0.0, 100.0)}, (COND,),
                         category="advanced/conditioning/flux"),
    "ControlNetApply": Node({"conditioning": Input(COND), "control_net": Input("CONTROL_NET"), "image": Input(IMAGE),
                             "strength": _float(1.0, 0.0, 10.0)}, (COND,), category="conditioning/controlnet"),
    "ControlNetApplyAdvanced": Node({"positive": Input(COND), "negative": Input(COND),
                                     "control_net": Input("CONTROL_NET"), "image": Input(IMAGE),
                                     "strength": _float(1.0, 0.0, 10.0), "start_percent": _float(0.0, 0.0, 1.0),
                                     "end_percent": _float(1.0, 0.0, 1.0), "vae": Input(V)}, (COND, COND),
                                    optional=frozenset({"vae"}), category="conditioning/controlnet",
                                    output_names=("positive", "negative")),
    "EmptyLatentImage": Node(dict(_EMPTY), (LATENT,), category="latent"),
    "EmptySD3LatentImage": Node({**_EMPTY, "width": _int(1024, 16, MAX_RESOLUTION),
                                 "height": _int(1024, 16, MAX_RESOLUTION)}, (LATENT,), category="latent/sd3"),
    "KSampler": Node(dict(_SAMPLING), (LATENT,), category="sampling"),
    "KSamplerAdvanced": Node({"model": Input(M), "add_noise": Input("COMBO", choices=("enable", "disable")),
                              "noise_seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": SAMPLER,
                              "scheduler": SCHEDULER, "positive": Input(COND), "negative": Input(COND),
                              "latent_image": Input(LATENT), "start_at_step": _int(0, 0, 10000),
                              "end_at_step": _int(10000, 0, 10000),
                              "return_with_leftover_noise": Input("COMBO", choices=("disable", "enable"))},
                             (LATENT,), category="sampling"),
    "VAEDecode": Node({"samples": Input(LATENT), "vae": Input(V)}, (IMAGE,), category="latent"),
    "VAEEncode": Node({"pixels": Input(IMAGE), "vae": Input(V)}, (LATENT,), category="latent"),
    "VAEEncodeForInpaint": Node({"pixels": Input(IMAGE), "vae": Input(V), "mask": Input(MASK),
                                 "grow_mask_by": _int(6, 0, 64)}, (LATENT,), category="latent/inpaint"),
    "InpaintModelConditioning": Node({"positive": Input(COND), "negative": Input(COND), "vae": Input(V),
                                      "pixels": Input(IMAGE), "mask": Input(MASK), "noise_mask": Input("BOOLEAN", True)},
                                     (COND, COND, LATENT), category="conditioning/inpaint",
                                     optional=frozenset({"noise_mask"}), output_names=("positive", "negative", "latent")),
    "SetLatentNoiseMask": Node({"samples": Input(LATENT), "mask": Input(MASK)}, (LATENT,), category="latent/inpaint"),
    "LatentUpscale": Node({"samples": Input(LATENT), "upscale_method": Input("COMBO", choices=UPSCALE_METHODS[:5]),
                           "width": _int(512, 0, MAX_RESOLUTION), "height": _int(512, 0, MAX_RESOLUTION),
                           "crop": Input("COMBO", choices=("disabled", "center"))}, (LATENT,), category="latent"),
    "LatentUpscaleBy": Node({"samples": Input(LATENT), "upscale_method": Input("COMBO", choices=UPSCALE_METHODS[:5]),
                             "scale_by": _float(1.5, 0.01, 8.0)}, (LATENT,), category="latent"),
    "LoadImage": Node({"image": Input("COMBO", listed="input")}, (IMAGE, MASK), category="image"),
    "LoadImageMask": Node({"image": Input("COMBO", listed="input"),
                           "channel": Input("COMBO", choices=("alpha", "red", "green", "blue"))}, (MASK,),
                          category="mask"),
    "ImageScale": Node({"image": Input(IMAGE), "upscale_method": Input("COMBO", choices=UPSCALE_METHODS[:5]),
                        "width": _int(512, 0, MAX_RESOLUTION), "height": _int(512, 0, MAX_RESOLUTION),
                        "crop": Input("COMBO", choices=("disabled", "center"))}, (IMAGE,), category="image/upscaling"),
    "ImageScaleBy": Node({"image": Input(IMAGE), "upscale_method": Input("COMBO", choices=UPSCALE_METHODS[:5]),
                          "scale_by": _float(1.0, 0.01, 8.0)}, (IMAGE,), category="image/upscaling"),
    "ImageUpscaleWithModel": Node({"upscale_model": Input("UPSCALE_MODEL"), "image": Input(IMAGE)}, (IMAGE,),
                                  category="image/upscaling"),
    "SaveImage": Node({"images": Input(IMAGE), "filename_prefix": Input("STRING", default="ComfyUI")}, (),
                      output=True, category="image"),
    "PreviewImage": Node({"images": Input(IMAGE)}, (), output=True, category="image"),
}
