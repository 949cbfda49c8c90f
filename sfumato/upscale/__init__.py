"""Upscalers: Real-ESRGAN via ncnn or plain torch, user ESRGAN/SRVGG weights, resamplers, tiling."""

from sfumato.upscale.upscalers import (BUILTIN, MAX_OUTPUT_PIXELS, RESAMPLERS, Upscaler, UpscalerInfo, extras_sizes,
                                       find, list_upscalers, load, upscale, upscalers_dir)

__all__ = ["BUILTIN", "MAX_OUTPUT_PIXELS", "RESAMPLERS", "Upscaler", "UpscalerInfo", "extras_sizes", "find",
           "list_upscalers", "load", "upscale", "upscalers_dir"]
