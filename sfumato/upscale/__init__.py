"""Upscalers: Real-ESRGAN via ncnn or plain torch, user ESRGAN/SRVGG weights, resamplers, tiling."""

from sfumato.upscale.upscalers import (BUILTIN, RESAMPLERS, Upscaler, UpscalerInfo, find, list_upscalers, load,
                                       upscale, upscalers_dir)

__all__ = ["BUILTIN", "RESAMPLERS", "Upscaler", "UpscalerInfo", "find", "list_upscalers", "load", "upscale",
           "upscalers_dir"]
