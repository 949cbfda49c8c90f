"""Token merging for Stable Diffusion (ToMe for SD; Bolya & Hoffman 2023, the `tomesd` algorithm).

Before a high-resolution self-attention, `ratio` of the image tokens are merged into similar ones: the tokens
are split into destinations (one per 2x2 window, picked by a seeded draw) and sources; each source is matched to its
most similar destination (cosine), and the most similar `ratio · N` sources are averaged into their destinations.
Self-attention runs on the remaining tokens; its output is copied back to the merged positions ("unmerge").
As tomesd's defaults: self-attention only (not cross-attention or the MLP), only in blocks at the latent's full
resolution (`max_downsample = 1`). It pays off where self-attention dominates, i.e. large images (>= 1024²);
the image changes a little (A1111 records `Token merging ratio`).

Installed per sampling pass on the UNet's `attn1` modules (instance `forward` wrappers), removed afterwards;
the draws are seeded per call, so the same request gives the same image.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch

from sfumato.speed.wrapping import forwards_replaced

Merge = Callable[[torch.Tensor], torch.Tensor]


def bipartite_soft_matching(metric: torch.Tensor, w: int, h: int, r: int,
                            generator: torch.Generator) -> tuple[Merge, Merge]:
    """(merge, unmerge) for tokens [B, N = h*w, C]: `r` source tokens averaged into their closest destination."""
    batch, n, _ = metric.shape
    if r <= 0:
        return (lambda x: x), (lambda x: x)
    hsy, wsx = h // 2, w // 2
    with torch.no_grad():
        pick = torch.randint(4, (hsy, wsx, 1), generator=generator).to(metric.device)  # dst per 2x2 window
        window = torch.zeros(hsy, wsx, 4, dtype=torch.int64, device=metric.device)
        window.scatter_(2, pick, -1)
        window = window.view(hsy, wsx, 2, 2).transpose(1, 2).reshape(hsy * 2, wsx * 2)
        if (hsy * 2, wsx * 2) != (h, w):  # odd sides: the leftover rows/columns are sources
            full = torch.zeros(h, w, dtype=torch.int64, device=metric.device)
            full[:hsy * 2, :wsx * 2] = window
            window = full
        order = window.reshape(1, -1, 1).argsort(dim=1)  # destinations (-1) first
        num_dst = hsy * wsx
        a_idx, b_idx = order[:, num_dst:, :], order[:, :num_dst, :]

        def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            c = x.shape[-1]
            return (x.gather(1, a_idx.expand(x.shape[0], -1, c)), x.gather(1, b_idx.expand(x.shape[0], -1, c)))

        normed = metric / metric.norm(dim=-1, keepdim=True)
        a, b = split(normed)
        scores = a @ b.transpose(-1, -2)
        r = min(a.shape[1], r)
        node_max, node_idx = scores.max(dim=-1)
        edge_idx = node_max.argsort(dim=-1, descending=True)[..., None]
        unm_idx, src_idx = edge_idx[:, r:, :], edge_idx[:, :r, :]
        dst_idx = node_idx[..., None].gather(1, src_idx)

    def merge(x: torch.Tensor) -> torch.Tensor:
        src, dst = split(x)
        c = x.shape[-1]
        unm = src.gather(1, unm_idx.expand(batch, -1, c))
        src = src.gather(1, src_idx.expand(batch, r, c))
        dst = dst.scatter_reduce(1, dst_idx.expand(batch, r, c), src, reduce="mean")
        return torch.cat([unm, dst], dim=1)

    def unmerge(x: torch.Tensor) -> torch.Tensor:
        unm_len = unm_idx.shape[1]
        unm, dst = x[:, :unm_len, :], x[:, unm_len:, :]
        c = x.shape[-1]
        src = dst.gather(1, dst_idx.expand(batch, r, c))
        out = torch.zeros(batch, n, c, device=x.device, dtype=x.dtype)
        out.scatter_(1, b_idx.expand(batch, num_dst, c), dst)
        out.scatter_(1, a_idx.expand(batch, a_idx.shape[1], 1).gather(1, unm_idx).expand(batch, unm_len, c), unm)
        out.scatter_(1, a_idx.expand(batch, a_idx.shape[1], 1).gather(1, src_idx).expand(batch, r, c), src)
        return out

    return merge, unmerge


class TokenMerging:
    """ToMe on one UNet's full-resolution self-attentions for one sampling pass."""

    def __init__(self, unet, ratio: float, seed: int = 0):
        self.ratio, self.seed = ratio, seed
        self.modules = [m for name, m in unet.named_modules() if name.endswith("attn1")]
        self.size: tuple[int, int] | None = None  # the latent's (h, w), set per UNet call
        self.calls = 0

    def before_call(self, height: int, width: int) -> None:
        self.size = (height, width)
        self.calls += 1

    def _wrap(self, module: torch.nn.Module):
        original = module.forward

        def forward(hidden_states, *args, **kwargs):
            h, w = self.size or (0, 0)
            if hidden_states.ndim != 3 or hidden_states.shape[1] != h * w or kwargs.get("encoder_hidden_states") \
                    is not None:
                return original(hidden_states, *args, **kwargs)
            generator = torch.Generator().manual_seed(self.seed + self.calls)
            merge, unmerge = bipartite_soft_matching(hidden_states, w, h, int(h * w * self.ratio), generator)
            return unmerge(original(merge(hidden_states), *args, **kwargs))

        return forward

    @contextlib.contextmanager
    def installed(self) -> Iterator[TokenMerging]:
        with forwards_replaced([(module, self._wrap(module)) for module in self.modules]):
            yield self


def token_merging_for(unet, ratio: float):
    if not ratio:
        return contextlib.nullcontext(None)
    return TokenMerging(unet, ratio).installed()
