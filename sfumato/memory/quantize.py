"""Weight-only quantization of the denoiser: int8 (any device) or float8 e4m3 (storage; GPUs and CPUs alike).

Each Linear and Conv2d weight of the UNet/transformer (but the first and last convolutions and layers under
`MIN_WEIGHTS` values) is stored in 8 bits with one float32 scale per output channel (absmax / 127 for int8,
absmax / 448 for e4m3) and dequantized to the model's dtype at each call: the weights take half the memory of
float16 (a quarter of float32); the arithmetic stays in the model's dtype. The modules stay `nn.Linear` / `nn.Conv2d`
subclasses, so seamless tiling (circular padding) and the step cache see them as before.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sfumato.errors import InvalidRequest

KINDS = {"int8": (torch.int8, 127.0), "fp8": (torch.float8_e4m3fn, 448.0),
         "f16": (torch.float16, None)}  # float16 storage, computed in the model's dtype (GGUF's F16 tensors)
MIN_WEIGHTS = 1024
KEEP = ("conv_in", "conv_out", "proj_out", "x_embedder", "context_embedder")  # model edges stay in full precision


def _quantize(weight: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    dtype, top = KINDS[kind]
    if top is None:
        return weight.detach().to(dtype), torch.ones(weight.shape[0], dtype=torch.float32, device=weight.device)
    flat = weight.detach().float().reshape(weight.shape[0], -1)
    scale = (flat.abs().amax(dim=1) / top).clamp(min=1e-12)
    scaled = flat / scale[:, None]
    packed = scaled.round().clamp(-top, top).to(dtype) if kind == "int8" else scaled.to(dtype)
    return packed.reshape(weight.shape), scale


class _Dequantizing:
    """The 8-bit weight, its scales and the dtype to compute in (shared by the Linear and Conv2d forms)."""

    def _pack(self, weight: torch.Tensor, bias: torch.Tensor | None, kind: str,
              compute_dtype: torch.dtype | None) -> None:
        packed, scale = _quantize(weight, kind)
        self.compute_dtype, self.kind = compute_dtype or weight.dtype, kind
        if bias is not None and compute_dtype is not None:
            bias = torch.nn.Parameter(bias.detach().to(compute_dtype), requires_grad=False)
        self.register_buffer("qweight", packed)
        self.register_buffer("weight_scale", scale)
        self.bias = bias

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (for code that reads it; the module itself never stores it)."""
        return self.dequantized()

    def dequantized(self) -> torch.Tensor:
        shape = (-1,) + (1,) * (self.qweight.dim() - 1)
        return (self.qweight.to(torch.float32) * self.weight_scale.view(shape)).to(self.compute_dtype)

    def _apply(self, fn, recurse=True):
        """`.to(device, dtype)`: the 8-bit weight and float32 scales move but keep their types (an fp8 weight cast
        to float16 and back is exact); the compute dtype follows."""
        packed_dtype, scale = self.qweight.dtype, self.weight_scale
        result = super()._apply(fn, recurse)
        self.compute_dtype = fn(torch.zeros((), dtype=self.compute_dtype)).dtype
        self.qweight = self.qweight.to(packed_dtype)
        self.weight_scale = scale.to(self.qweight.device)
        return result


class QuantizedLinear(_Dequantizing, nn.Linear):
    def __init__(self, source: nn.Linear, kind: str, compute_dtype: torch.dtype | None = None):
        nn.Module.__init__(self)
        self.in_features, self.out_features = source.in_features, source.out_features
        self._pack(source.weight, source.bias, kind, compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.dequantized(), self.bias)


class QuantizedConv2d(_Dequantizing, nn.Conv2d):
    def __init__(self, source: nn.Conv2d, kind: str, compute_dtype: torch.dtype | None = None):
        nn.Module.__init__(self)
        for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "transposed",
                     "output_padding", "groups", "padding_mode", "_reversed_padding_repeated_twice"):
            setattr(self, name, getattr(source, name))
        self._pack(source.weight, source.bias, kind, compute_dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.dequantized(), self.bias)


def quantize_weights(model: nn.Module, kind: str, everything: bool = False,
                     compute_dtype: torch.dtype | None = None) -> dict[str, int]:
    """Replace the model's large Linear/Conv2d layers by 8-bit ones in place (`everything`: every plain Linear and
    Conv2d whose weight is float16, kept so: GGUF's float16 tensors), computing in `compute_dtype` (default: the
    weight's); returns counts and bytes."""
    if kind not in KINDS:
        raise InvalidRequest(f"weight quantization must be one of {', '.join(KINDS)}, got {kind!r}")
    swapped = 0
    for parent_name, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            full = f"{parent_name}.{name}" if parent_name else name
            if type(child) not in (nn.Linear, nn.Conv2d):
                continue
            if everything and child.weight.dtype != torch.float16:
                continue
            if not everything and (child.weight.numel() < MIN_WEIGHTS or full.split(".")[0] in KEEP):
                continue
            cls = QuantizedLinear if isinstance(child, nn.Linear) else QuantizedConv2d
            replacement = cls(child, kind, compute_dtype)
            setattr(parent, name, replacement)
            swapped += 1
    return {"layers": swapped, "bytes": weight_bytes(model)}


def weight_bytes(model: nn.Module) -> int:
    """Bytes held by the model's parameters and buffers (the memory its weights take)."""
    tensors = list(model.parameters()) + list(model.buffers())
    return sum(t.numel() * t.element_size() for t in tensors)
