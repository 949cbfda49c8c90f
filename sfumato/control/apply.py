"""Control during sampling: each unit's map at the pass's size, and the extra UNet inputs at each step.

ControlNets add residuals to the UNet's skip connections and middle block, computed every step from the noisy
latents; T2I-Adapters add features computed once per pass. A unit's weight scales its output; guidance start/end
(fractions of the pass's steps) switch it on and off; the control mode follows the A1111 extension:
- balanced: the same control on the negative and the positive rows;
- prompt ("My prompt is more important"): deeper residuals weighted down, 0.825 ** (n - 1 - k) for residual k of n;
- control ("ControlNet is more important"): that weighting, and control on the positive rows only, so
  classifier-free guidance pushes toward the control.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from sfumato.control import preprocessors
from sfumato.control.models import FLOW_KINDS, ControlModel
from sfumato.control.units import ControlUnit
from sfumato.errors import InvalidRequest, UnsupportedModel
from sfumato.pipelines import images as imgs

SOFT_INJECTION = 0.825
# ControlNet-Union (ProMax) control types, by the preprocessor that makes their maps
UNION_TYPES = {"openpose": 0, "depth": 1, "softedge": 2, "scribble": 2, "canny": 3, "lineart": 3, "lineart_anime": 3,
               "mlsd": 3, "threshold": 3, "invert": 3, "normal": 4, "segmentation": 5, "tile": 6, "blur": 6,
               "inpaint": 7}


def resize_map(image: Image.Image, width: int, height: int, mode: str) -> Image.Image:
    """Fit a map to width x height: stretch, scale to cover and crop the centre, or scale to fit and pad with black."""
    w, h = image.size
    if mode == "just_resize":
        return _resize(image, width, height)
    scale = max(width / w, height / h) if mode == "crop_and_resize" else min(width / w, height / h)
    scaled = _resize(image, max(1, round(w * scale)), max(1, round(h * scale)))
    canvas = Image.new("RGB", (width, height))
    canvas.paste(scaled, ((width - scaled.width) // 2, (height - scaled.height) // 2))
    return canvas


def _resize(image: Image.Image, width: int, height: int) -> Image.Image:
    if image.size == (width, height):
        return image
    array = np.asarray(image)
    binary = bool(np.isin(array, (0, 255)).all())
    shrinking = width * height < image.width * image.height
    out = image.resize((width, height), Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS)
    if binary:  # edge and scribble maps stay binary; thin lines survive shrinking
        out = Image.fromarray(np.where(np.asarray(out) > (32 if shrinking else 127), 255, 0).astype(np.uint8))
    return out


def control_map(unit: ControlUnit, width: int, height: int) -> Image.Image:
    """The unit's preprocessed map at width x height (pixel perfect unless processor_res is set)."""
    source = imgs.load_image(unit.image, "control image").convert("RGB")
    resolution = unit.processor_res
    if resolution is None or unit.pixel_perfect:
        resolution = preprocessors.pixel_perfect_resolution(source.size, (width, height), unit.resize_mode)
    resolution = min(max(resolution, 16), 4096)
    mapped = preprocessors.run(unit.module, source, resolution, unit.threshold_a, unit.threshold_b)
    return resize_map(mapped, width, height, unit.resize_mode)


def map_tensor(unit: ControlUnit, mapped: Image.Image) -> torch.Tensor:
    """[1, 3, H, W] in [0, 1]; the inpaint preprocessor marks masked pixels with -1 (ControlNet inpaint)."""
    tensor = torch.from_numpy(np.asarray(mapped.convert("RGB"), dtype=np.float32) / 255.0).permute(2, 0, 1)[None]
    if unit.module == "inpaint":
        if not unit.mask:
            raise InvalidRequest("the inpaint preprocessor needs the unit's mask")
        mask = resize_map(imgs.load_image(unit.mask, "control mask").convert("RGB"), mapped.width, mapped.height,
                          unit.resize_mode)
        masked = torch.from_numpy(np.asarray(mask.convert("L"), dtype=np.float32) / 255.0 > 0.5)
        tensor[:, :, masked] = -1.0
    return tensor


def union_type(module: str) -> int:
    if module not in UNION_TYPES:
        raise InvalidRequest(f"a ControlNet-Union model needs to know the map type; preprocessor {module!r} has none: "
                             f"use one of {', '.join(sorted(UNION_TYPES))}")
    return UNION_TYPES[module]


def region_tensor(unit: ControlUnit, width: int, height: int, device: torch.device) -> torch.Tensor | None:
    """The unit's effective region mask as [1, 1, H, W] in [0, 1] at the output size (None: no mask)."""
    if not unit.effective_region_mask:
        return None
    mask = imgs.load_image(unit.effective_region_mask, "control effective region mask").convert("L")
    mask = mask.resize((width, height), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)[None, None].to(device)


@dataclass
class PreparedUnit:
    unit: ControlUnit
    model: ControlModel | None  # None: a reference-only unit
    image: torch.Tensor  # [1, 3, H, W] in [0, 1]
    adapter_state: list[torch.Tensor] | None = None  # T2I-Adapter features (computed once per pass)
    region: torch.Tensor | None = None  # [1, 1, H, W] in [0, 1]: where the control applies (None: everywhere)

    def masked(self, residuals: list[torch.Tensor]) -> list[torch.Tensor]:
        """Residuals (or adapter features) times the effective region, resized to each one's resolution."""
        if self.region is None:
            return residuals
        import torch.nn.functional as F

        return [r * F.interpolate(self.region.to(r.device, r.dtype), size=r.shape[-2:], mode="area")
                for r in residuals]


class ControlSet:
    """Every unit of a pass, ready to give the UNet its extra inputs at each step."""

    def __init__(self, units: list[tuple[ControlUnit, ControlModel | None]], width: int, height: int, device: torch.device,
                 dtype: torch.dtype, ip_embeds: tuple[torch.Tensor, torch.Tensor] | None = None):
        self.ip_embeds = ip_embeds  # IP-Adapter (negative, positive) image embeddings, one row per image
        self.units: list[PreparedUnit] = []
        self.references: list[PreparedUnit] = []  # reference-only units: no model, the image at the pass's size
        for unit, model in units:
            if unit.is_reference:
                image = map_tensor(unit, control_map(unit, width, height)).to(device, dtype)
                self.references.append(PreparedUnit(unit, None, image))
                continue
            if model.kind in FLOW_KINDS:
                raise UnsupportedModel(f"control model {model.name} is a {FLOW_KINDS[model.kind].upper()} ControlNet; "
                                       "it does not fit a UNet model")
            image = map_tensor(unit, control_map(unit, width, height)).to(device, model.module.dtype)
            prepared = PreparedUnit(unit, model, image, region=region_tensor(unit, width, height, device))
            if model.kind == "t2i-adapter":
                with torch.no_grad():
                    prepared.adapter_state = prepared.masked([f * unit.weight for f in model.module(image)])
            self.units.append(prepared)
        self.dtype = dtype

    def unet_kwargs(self, step: int, steps: int, model_input: torch.Tensor, t, context: torch.Tensor,
                    added: dict | None, class_labels: torch.Tensor | None, negative_rows: list[bool],
                    row_images: list[int]) -> dict:
        """`down_block_additional_residuals` / `mid_block_additional_residual` (ControlNets, summed),
        `down_intrablock_additional_residuals` (T2I-Adapters, summed) and the IP-Adapter's image embeddings (in
        `added_cond_kwargs`) for this step's UNet rows."""
        rows = model_input.shape[0]
        positive = torch.tensor([not n for n in negative_rows], device=model_input.device)
        down: list[torch.Tensor] | None = None
        mid: torch.Tensor | None = None
        intrablock: list[torch.Tensor] | None = None
        for prepared in self.units:
            unit = prepared.unit
            if not unit.active(step, steps) or unit.weight == 0:
                continue
            if prepared.adapter_state is not None:
                features = [f.repeat(rows, 1, 1, 1).to(self.dtype) for f in prepared.adapter_state]
                intrablock = features if intrablock is None else [a + b for a, b in zip(intrablock, features)]
                continue
            net = prepared.model.module
            dtype = net.dtype
            kwargs = {}
            if added is not None:
                kwargs["added_cond_kwargs"] = {k: v.to(dtype) for k, v in added.items()}
            if class_labels is not None:
                kwargs["class_labels"] = class_labels.to(dtype)
            image = prepared.image.repeat(rows, 1, 1, 1)
            if prepared.model.kind == "controlnet-union":  # one model, many map types: say which this map is
                index = union_type(unit.module)
                kwargs["control_type"] = torch.zeros(rows, net.config.num_control_type, device=image.device,
                                                     dtype=dtype).index_fill_(1, torch.tensor([index], device=image.device), 1)
                kwargs["control_type_idx"] = [index]
                image = [image]
            res_down, res_mid = net(model_input.to(dtype), t, encoder_hidden_states=context.to(dtype),
                                    controlnet_cond=image, conditioning_scale=float(unit.weight), return_dict=False,
                                    **kwargs)
            residuals = [*res_down, res_mid]
            if unit.control_mode != "balanced":
                count = len(residuals)
                residuals = [r * SOFT_INJECTION ** (count - 1 - k) for k, r in enumerate(residuals)]
            if unit.control_mode == "control":
                mask = positive.view(-1, 1, 1, 1).to(residuals[0].dtype)
                residuals = [r * mask for r in residuals]
            residuals = [r.to(self.dtype) for r in prepared.masked(residuals)]
            if down is None:
                down, mid = residuals[:-1], residuals[-1]
            else:
                down = [a + b for a, b in zip(down, residuals[:-1])]
                mid = mid + residuals[-1]
        kwargs: dict = {}
        if down is not None:
            kwargs["down_block_additional_residuals"], kwargs["mid_block_additional_residual"] = down, mid
        if intrablock is not None:
            kwargs["down_intrablock_additional_residuals"] = intrablock
        if self.ip_embeds is not None:
            negative, positive = self.ip_embeds
            rows_embeds = torch.stack([(negative if is_negative else positive)[image]
                                       for image, is_negative in zip(row_images, negative_rows)])
            kwargs["added_cond_kwargs"] = {**(added or {}), "image_embeds": [rows_embeds.to(self.dtype)]}
        return kwargs
