"""The A1111 ControlNet extension's API: `alwayson_scripts.controlnet.args` units in txt2img/img2img, and
`/controlnet/model_list`, `/controlnet/module_list`, `/controlnet/detect`, `/controlnet/version`."""

from __future__ import annotations

import base64
import io
from typing import Any

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict

from sfumato.control import preprocessors
from sfumato.errors import InvalidRequest

API_VERSION = 2
# the extension's unit fields and ours (the same names, except where noted)
UNIT_FIELDS = ("module", "model", "weight", "resize_mode", "processor_res", "threshold_a", "threshold_b",
               "guidance_start", "guidance_end", "control_mode", "pixel_perfect")


def units_from_alwayson(scripts: dict[str, Any], service) -> tuple[list[dict], dict]:
    """`alwayson_scripts.controlnet.args` -> our control units (disabled or image-less units are skipped), and the
    request fields of the block's other options: the IP-Adapter fields of an `ip-adapter*` unit (the extension runs
    IP-Adapters as ControlNet units), `consistent` from `style_align` (its Style Align batch option)."""
    if not isinstance(scripts, dict):
        raise InvalidRequest("alwayson_scripts must be an object")
    block = next((v for k, v in scripts.items() if k.lower() == "controlnet"), None)
    if block is None:
        return [], {}
    args = block.get("args", []) if isinstance(block, dict) else block
    fields: dict[str, Any] = {}
    align = block.get("style_align") if isinstance(block, dict) else None
    if align is not None and align is not False:  # the extension's Style Align batch option (a UI checkbox there)
        if align is True:
            align = 1.0
        if isinstance(align, bool) or not isinstance(align, (int, float)):
            raise InvalidRequest("alwayson_scripts.controlnet.style_align must be true or a strength (0..2)")
        fields["consistent"] = float(align)
    if not isinstance(args, list):
        raise InvalidRequest("alwayson_scripts.controlnet.args must be a list of units")
    units = []
    for index, raw in enumerate(args):
        if not isinstance(raw, dict):
            raise InvalidRequest(f"ControlNet unit {index} must be an object")
        if raw.get("enabled", True) is False:
            continue
        image, mask = _unit_images(raw)
        if image is None:
            continue  # A1111 skips a unit without an image (it would use the img2img input; not supported)
        if str(raw.get("module", "")).lower().startswith("ip-adapter") or \
                str(raw.get("model", "")).lower().startswith("ip-adapter"):
            if "ip_adapter" in fields:
                raise InvalidRequest("one IP-Adapter unit per request")
            fields.update(service.ip_adapter_fields(raw.get("model"), [image]))
            fields["ip_scale"] = float(raw.get("weight", 1.0))
            continue
        unit = {name: raw[name] for name in UNIT_FIELDS if name in raw and raw[name] is not None}
        unit["image"], unit["mask"] = image, mask
        if isinstance(raw.get("effective_region_mask"), str) and raw["effective_region_mask"]:
            unit["effective_region_mask"] = raw["effective_region_mask"]
        if isinstance(unit.get("module"), str) and unit["module"].lower() == "none":
            unit["module"] = "none"
        units.append(unit)
    return service.control_units(units), fields


def _unit_images(raw: dict[str, Any]) -> tuple[str | None, str | None]:
    """The extension accepts `image` (or the older `input_image`) as base64 or {"image": ..., "mask": ...}."""
    image = raw.get("image", raw.get("input_image"))
    mask = raw.get("mask", raw.get("mask_image"))
    if isinstance(image, dict):
        image, mask = image.get("image"), image.get("mask", mask)
    if image is not None and not isinstance(image, str):
        raise InvalidRequest("a ControlNet unit's image must be a base64 string")
    if mask is not None and not isinstance(mask, str):
        raise InvalidRequest("a ControlNet unit's mask must be a base64 string")
    return image or None, mask or None


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    controlnet_module: str = "none"
    controlnet_input_images: list[str] = []
    controlnet_images: list[str] = []  # the name `webuiapi` sends
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1


def add_routes(app: FastAPI, service, guarded: list) -> None:
    @app.get("/controlnet/version", tags=["controlnet"], dependencies=guarded)
    def version():
        return {"version": API_VERSION}

    @app.get("/controlnet/model_list", tags=["controlnet"], dependencies=guarded)
    def model_list(update: bool = False):
        if update:
            service.refresh_models()
        return {"model_list": sorted(service.control_models)}

    @app.get("/controlnet/module_list", tags=["controlnet"], dependencies=guarded)
    def module_list(alias_names: bool = False):
        usable = [p for p in preprocessors.PREPROCESSORS.values() if p.run is not None]
        detail = {}
        for pre in usable:
            sliders = [{"name": "Processor Res", "value": 512, "min": 64, "max": 2048}]
            for threshold in (pre.threshold_a, pre.threshold_b):
                if threshold:
                    label, default, low, high = threshold
                    sliders.append({"name": label, "value": default, "min": low, "max": high})
            detail[pre.name] = {"model_free": pre.name in ("none", "invert", "shuffle", "tile", "blur", "color"),
                                "sliders": sliders}
        return {"module_list": [p.name for p in usable], "module_detail": detail}

    @app.post("/controlnet/detect", tags=["controlnet"], dependencies=guarded)
    async def detect(body: DetectRequest):
        inputs = body.controlnet_input_images or body.controlnet_images
        if not inputs:
            raise InvalidRequest("controlnet_input_images must hold at least one base64 image")
        if len(inputs) > 8:
            raise InvalidRequest("at most 8 images per detect call")

        def run() -> list[str]:
            out = []
            for index, data in enumerate(inputs):
                image = service.open_upload(data, f"controlnet_input_images[{index}]")
                mapped = preprocessors.run(body.controlnet_module, image, body.controlnet_processor_res,
                                           body.controlnet_threshold_a, body.controlnet_threshold_b,
                                           service.settings.limits.max_pixels)
                buffer = io.BytesIO()
                mapped.save(buffer, format="PNG")
                out.append(base64.b64encode(buffer.getvalue()).decode())
            return out

        return {"images": await run_in_threadpool(run), "info": "Success"}
