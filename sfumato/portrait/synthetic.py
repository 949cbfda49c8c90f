"""A synthetic subject for demos and tests of the portrait workflow: "zorp", a purple blob with two yellow eyes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def synthetic_photo(seed: int) -> Image.Image:
    """Zorp at a random place on a random background (96x80), the same picture for the same seed."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (96, 80), tuple(int(v) for v in rng.integers(150, 255, 3)))
    draw = ImageDraw.Draw(image)
    x, y = int(rng.integers(20, 50)), int(rng.integers(15, 35))
    draw.ellipse((x, y, x + 40, y + 40), fill=(120, 40, 160))
    draw.ellipse((x + 10, y + 12, x + 17, y + 19), fill=(250, 220, 0))
    draw.ellipse((x + 23, y + 12, x + 30, y + 19), fill=(250, 220, 0))
    return image
