"""Upscaler networks in plain torch: ESRGAN/Real-ESRGAN's RRDBNet and Real-ESRGAN's SRVGGNetCompact.

Written here (not taken from spandrel or basicsr) because both depend on a vision package that replaces the CPU
torch build here. Parameter names follow basicsr, the layout Real-ESRGAN's `.pth` files use; `from_state_dict`
also reads the original ESRGAN layout (`model.N...`) and infers every size from the tensors, so a user's file needs no config.
"""

from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from sfumato.errors import UnsupportedModel


class ResidualDenseBlock(nn.Module):
    """Five 3x3 convolutions, each seeing all earlier features (ESRGAN, Wang et al. 2018)."""

    def __init__(self, num_feat: int = 64, num_grow_ch: int = 32):
        super().__init__()
        for i in range(5):
            out = num_feat if i == 4 else num_grow_ch
            setattr(self, f"conv{i + 1}", nn.Conv2d(num_feat + i * num_grow_ch, out, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for i in range(1, 5):
            features.append(F.leaky_relu(getattr(self, f"conv{i}")(torch.cat(features, 1)), 0.2))
        return self.conv5(torch.cat(features, 1)) * 0.2 + x


class RRDB(nn.Module):
    """Residual-in-residual dense block: three dense blocks and a scaled skip."""

    def __init__(self, num_feat: int, num_grow_ch: int = 32):
        super().__init__()
        self.rdb1 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb2 = ResidualDenseBlock(num_feat, num_grow_ch)
        self.rdb3 = ResidualDenseBlock(num_feat, num_grow_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rdb3(self.rdb2(self.rdb1(x))) * 0.2 + x


class RRDBNet(nn.Module):
    """ESRGAN / Real-ESRGAN generator. Scale 1 and 2 fold pixels into channels first (pixel-unshuffle), as Real-ESRGAN
    x2 does; each further x2 is a nearest upsample and a convolution."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, scale: int = 4, num_feat: int = 64,
                 num_block: int = 23, num_grow_ch: int = 32, unshuffle: int | None = None):
        super().__init__()
        self.scale = scale
        self.unshuffle = unshuffle or {1: 4, 2: 2}.get(scale, 1)
        self.num_ups = int(math.log2(scale * self.unshuffle))
        self.conv_first = nn.Conv2d(num_in_ch * self.unshuffle**2, num_feat, 3, 1, 1)
        self.body = nn.Sequential(*[RRDB(num_feat, num_grow_ch) for _ in range(num_block)])
        self.conv_body = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        for i in range(self.num_ups):
            setattr(self, f"conv_up{i + 1}", nn.Conv2d(num_feat, num_feat, 3, 1, 1))
        self.conv_hr = nn.Conv2d(num_feat, num_feat, 3, 1, 1)
        self.conv_last = nn.Conv2d(num_feat, num_out_ch, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.unshuffle > 1:
            x = F.pixel_unshuffle(x, self.unshuffle)
        feat = self.conv_first(x)
        feat = feat + self.conv_body(self.body(feat))
        for i in range(self.num_ups):
            feat = F.leaky_relu(getattr(self, f"conv_up{i + 1}")(F.interpolate(feat, scale_factor=2, mode="nearest")),
                                0.2)
        return self.conv_last(F.leaky_relu(self.conv_hr(feat), 0.2))


class SRVGGNetCompact(nn.Module):
    """Real-ESRGAN's compact VGG-style network (realesr-general / animevideov3): convolutions + PReLU at low
    resolution, a pixel shuffle, and the nearest-upsampled input added back."""

    def __init__(self, num_in_ch: int = 3, num_out_ch: int = 3, num_feat: int = 64, num_conv: int = 16,
                 upscale: int = 4):
        super().__init__()
        self.scale = upscale
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        for _ in range(num_conv):
            layers += [nn.Conv2d(num_feat, num_feat, 3, 1, 1), nn.PReLU(num_feat)]
        layers.append(nn.Conv2d(num_feat, num_out_ch * upscale * upscale, 3, 1, 1))
        self.body = nn.ModuleList(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for layer in self.body:
            out = layer(out)
        return F.pixel_shuffle(out, self.scale) + F.interpolate(x, scale_factor=self.scale, mode="nearest")


_OLD_ESRGAN = re.compile(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0\.(weight|bias)")


def _from_old_esrgan(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original ESRGAN layout (`model.0`, `model.1.sub.N.RDBk.convj.0`, ...) -> basicsr names."""
    blocks = {int(m.group(1)) for k in state if (m := _OLD_ESRGAN.fullmatch(k))}
    tail = {"model.0": "conv_first", f"model.1.sub.{len(blocks)}": "conv_body"}
    ups = sorted({int(k.split(".")[1]) for k in state if k.startswith("model.") and k.split(".")[1].isdigit()
                  and int(k.split(".")[1]) >= 3})
    # after the body: one conv per x2 upsample, then conv_hr and conv_last (the two highest indices)
    for i, index in enumerate(ups[:-2]):
        tail[f"model.{index}"] = f"conv_up{i + 1}"
    tail[f"model.{ups[-2]}"], tail[f"model.{ups[-1]}"] = "conv_hr", "conv_last"
    out = {}
    for key, value in state.items():
        if m := _OLD_ESRGAN.fullmatch(key):
            out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{m.group(4)}"] = value
            continue
        prefix, _, param = key.rpartition(".")
        if prefix not in tail:
            raise UnsupportedModel(f"unexpected ESRGAN tensor {key}")
        out[f"{tail[prefix]}.{param}"] = value
    return out


def from_state_dict(state: dict[str, torch.Tensor]) -> nn.Module:
    """Build the network a state dict describes (sizes inferred from its tensors) and load it strictly."""
    if "model.0.weight" in state:
        state = _from_old_esrgan(state)
    if "conv_first.weight" in state:
        num_block = len({k.split(".")[1] for k in state if k.startswith("body.")})
        in_ch = state["conv_first.weight"].shape[1]
        num_ups = len([k for k in state if re.fullmatch(r"conv_up\d+\.weight", k)])
        unshuffle = {3: 1, 12: 2, 48: 4}.get(in_ch)
        if unshuffle is None:
            raise UnsupportedModel(f"RRDBNet with {in_ch} input channels is not supported (3, 12 or 48)")
        net = RRDBNet(3, state["conv_last.weight"].shape[0], 2**num_ups // unshuffle,
                      state["conv_first.weight"].shape[0], num_block, state["body.0.rdb1.conv1.weight"].shape[0],
                      unshuffle)
    elif "body.0.weight" in state and "body.1.weight" in state and state["body.1.weight"].ndim == 1:
        last = max(int(k.split(".")[1]) for k in state if k.startswith("body."))
        out_ch, in_ch = 3, state["body.0.weight"].shape[1]
        upscale = math.isqrt(state[f"body.{last}.weight"].shape[0] // out_ch)
        net = SRVGGNetCompact(in_ch, out_ch, state["body.0.weight"].shape[0], (last - 2) // 2, upscale)
    else:
        raise UnsupportedModel("not an ESRGAN/Real-ESRGAN (RRDBNet) or SRVGGNetCompact upscaler: unknown tensor names")
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise UnsupportedModel(f"upscaler tensors do not fit the inferred network: {str(exc).splitlines()[0]}") from None
    return net.eval()
