"""Cheap step previews: a linear latent -> RGB map (A1111's "Approx cheap", ComfyUI's latent2rgb), fitted to the
loaded model's own VAE instead of hard-coded per family.

`fit_latent_rgb` encodes solid colours and smooth random colour images with the model's VAE encoder and solves a least-squares
map from each latent pixel (plus a bias) to the mean colour of the image patch it covers. One fit per model
(a fraction of a second, once); a preview is then one small matrix product instead of a VAE decode.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from PIL import Image

from sfumato.models.loader import LoadedModel
from sfumato.pipelines.steps import encode_images

FIT_IMAGES = 12


def _calibration_images(count: int, side: int, seed: int = 0) -> torch.Tensor:
    """Solid colours (black, white, primaries, random) and smooth random colour fields in [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    corners = torch.tensor([[a, b, c] for a in (-1.0, 1.0) for b in (-1.0, 1.0) for c in (-1.0, 1.0)])
    solids = torch.cat([corners, torch.rand(count, 3, generator=generator) * 2 - 1])[:, :, None, None]
    solids = solids.expand(-1, -1, side, side)
    coarse = torch.rand(count, 3, 4, 4, generator=generator) * 2 - 1
    fields = F.interpolate(coarse, size=(side, side), mode="bilinear", align_corners=False)
    return torch.cat([solids, fields])


@torch.no_grad()
def fit_latent_rgb(model: LoadedModel) -> torch.Tensor:
    """A [C + 1, 3] matrix taking a latent pixel (and 1) to RGB in [0, 1], least squares over encoded images."""
    scale = model.vae_scale
    images = _calibration_images(FIT_IMAGES, 8 * scale)
    latents = encode_images(model, images).float().cpu()  # [N, C, 8, 8]
    colours = F.avg_pool2d(images, scale) / 2 + 0.5  # the patch each latent pixel covers, [N, 3, 8, 8]
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(len(x), 1)], dim=1)
    y = colours.permute(0, 2, 3, 1).reshape(-1, 3)
    return torch.linalg.lstsq(x, y).solution


def cheap_preview(latents: torch.Tensor, factors: torch.Tensor, scale: int) -> Image.Image:
    """The first image of a batch of latents through the linear map, enlarged to output size."""
    latent = latents[0].float().cpu()
    rgb = torch.einsum("chw,cr->hwr", latent, factors[:-1]) + factors[-1]
    array = (rgb.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(array)
    return image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
