"""Run an image-to-image network tile by tile, blending overlaps with linear ramps so no seam shows.

Memory then grows with the tile, not the image. Each tile is run with `pad` extra pixels of context on every
side (cut off again, as Real-ESRGAN's own tiling does), so the network's border effects stay outside what is
kept; the ramps hide what is left (tested: tiled == untiled within a small tolerance on a smooth image).
"""

from __future__ import annotations

from typing import Callable

import torch

Network = Callable[[torch.Tensor], torch.Tensor]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Offsets of tiles of `tile` pixels covering `size`, neighbours sharing at least `overlap` pixels."""
    if size <= tile:
        return [0]
    stride = max(tile - overlap, 1)
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def even_tile(size: int, tile: int, overlap: int) -> int:
    """The tile length (<= `tile`) that covers `size` with the fewest tiles, spread evenly: 1024 px in tiles of at
    most 512 with 16 px overlap are three of 352, not two of 512 and a third mostly repeating them."""
    if size <= tile:
        return size
    count = -(-(size - overlap) // max(tile - overlap, 1))
    return min(tile, -(-(size + (count - 1) * overlap) // count))


def _ramp(length: int, fade_start: int, fade_end: int) -> torch.Tensor:
    """1 inside; rising over `fade_start` pixels at the start and falling over `fade_end` at the end (never 0)."""
    weight = torch.ones(length)
    if fade_start:
        weight[:fade_start] = (torch.arange(fade_start) + 0.5) / fade_start
    if fade_end:
        weight[length - fade_end:] = torch.minimum(weight[length - fade_end:],
                                                   ((torch.arange(fade_end) + 0.5) / fade_end).flip(0))
    return weight


def run_tiled(network: Network, x: torch.Tensor, scale: int, tile: int | tuple[int, int] = 192,
              overlap: int = 16, pad: int = 0) -> torch.Tensor:
    """`network(x)` for x [B, C, H, W], computed on tiles of at most `tile` input pixels, each seen with `pad`
    pixels of context. An int: square-ish tiles, sized to cover the image evenly; (height, width): tiles of exactly
    that size (SD upscale, whose model works at one size); 0: the whole image at once."""
    height, width = x.shape[-2:]
    if isinstance(tile, int):
        if tile <= 0 or (height <= tile and width <= tile):
            return network(x)
        tile_h, tile_w = even_tile(height, tile, overlap), even_tile(width, tile, overlap)
    else:
        tile_h, tile_w = min(tile[0], height), min(tile[1], width)
    ys, xs = tile_starts(height, tile_h, overlap), tile_starts(width, tile_w, overlap)
    out = weight = None
    for y in ys:
        for x0 in xs:
            top, left = max(y - pad, 0), max(x0 - pad, 0)
            bottom, right = min(y + tile_h + pad, height), min(x0 + tile_w + pad, width)
            piece = network(x[..., top:bottom, left:right])
            piece = piece[..., (y - top) * scale:(y - top + tile_h) * scale, (x0 - left) * scale:(x0 - left + tile_w) * scale]
            if out is None:
                out = piece.new_zeros(*piece.shape[:2], height * scale, width * scale)
                weight = piece.new_zeros(1, 1, height * scale, width * scale)
            fade = overlap * scale
            wy = _ramp(tile_h * scale, fade if y > 0 else 0, fade if y + tile_h < height else 0)
            wx = _ramp(tile_w * scale, fade if x0 > 0 else 0, fade if x0 + tile_w < width else 0)
            mask = (wy[:, None] * wx[None, :]).to(piece)
            region = (..., slice(y * scale, (y + tile_h) * scale), slice(x0 * scale, (x0 + tile_w) * scale))
            out[region] += piece * mask
            weight[region] += mask
    return out / weight
