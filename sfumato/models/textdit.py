"""A text-conditioned DiT denoiser that drops in where a UNet2DConditionModel goes (`sfumato train scratch --arch dit`).

It is diffusers' PixArt-α transformer (patchify, adaLN-single timestep modulation, self- and cross-attention blocks,
unpatchify), called like a UNet: `model(sample, timestep, encoder_hidden_states=...)`. So the ldm family's engine,
samplers, guidance and trainer run it unchanged, and a model folder names it in `model_index.json` as
`["sfumato.models.textdit", "TextDiT"]` (diffusers imports the class from this installed module; no remote code).
The prediction has the latent's channels (no learned variance), like the U-Net it is compared with.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import PixArtTransformer2DModel
from diffusers.models.modeling_outputs import Transformer2DModelOutput

CLASS_NAME = "TextDiT"
MODULE = __name__


class TextDiT(PixArtTransformer2DModel):
    """PixArt-α blocks behind the UNet call signature (`class_labels`, `added_cond_kwargs` and the other UNet-only
    inputs are accepted and ignored: text reaches the model through cross-attention only)."""

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor | float | int,  # type: ignore[override]
                encoder_hidden_states: torch.Tensor | None = None, return_dict: bool = True,
                encoder_attention_mask: torch.Tensor | None = None, **_unet_inputs: Any):
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])
        out = super().forward(sample, encoder_hidden_states=encoder_hidden_states, timestep=timestep,
                              added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                              encoder_attention_mask=encoder_attention_mask, return_dict=False)[0]
        return Transformer2DModelOutput(sample=out) if return_dict else (out,)


def build_textdit(config: dict[str, Any], text_hidden: int) -> TextDiT:
    """A TextDiT from a config (`sample_size` and `patch_size` in latent pixels, `num_layers`, `num_attention_heads`,
    `attention_head_dim`) whose cross-attention and caption projection fit a `text_hidden`-wide text encoder."""
    allowed = {"num_attention_heads", "attention_head_dim", "in_channels", "num_layers", "sample_size", "patch_size",
               "dropout", "activation_fn", "norm_eps", "interpolation_scale"}
    unknown = sorted(set(config) - allowed - {"_class_name", "out_channels", "cross_attention_dim", "caption_channels"})
    if unknown:
        from sfumato.errors import InvalidRequest

        raise InvalidRequest(f"unknown DiT settings {', '.join(unknown)} (allowed: {', '.join(sorted(allowed))})")
    settings = {k: v for k, v in config.items() if k in allowed}
    channels = settings.setdefault("in_channels", 4)
    width = settings.get("num_attention_heads", 16) * settings.get("attention_head_dim", 72)
    return TextDiT(**settings, out_channels=channels, cross_attention_dim=width, caption_channels=text_hidden,
                   use_additional_conditions=False, norm_num_groups=1)
