"""Preprocessors (annotators) pinned on a fixed image, their A1111 names, pixel-perfect resolution, the CLI."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from sfumato.control import preprocessors as pre
from sfumato.errors import InvalidRequest


def fixed() -> Image.Image:
    image = Image.new("RGB", (64, 48), (240, 240, 240))
    draw = ImageDraw.Draw(image)
    draw.rectangle((8, 8, 30, 40), fill=(200, 30, 30))
    draw.ellipse((34, 10, 58, 34), outline=(20, 20, 120), width=3)
    draw.line((0, 47, 63, 20), fill=(10, 160, 10), width=2)
    return image


# name: (mean, pixels > 127, pixel (24, 20), pixel (22, 46)) on the fixed image at its own size
PINNED = {
    "none": (186.469, 6997, [200, 30, 30], [240, 240, 240]),
    "canny": (26.064, 942, [0, 0, 0], [0, 0, 0]),
    "threshold": (170.664, 6168, [0, 0, 0], [255, 255, 255]),
    "scribble": (84.336, 3048, [255, 255, 255], [0, 0, 0]),
    "softedge": (50.024, 1554, [0, 0, 0], [0, 0, 0]),
    "lineart": (19.466, 459, [0, 0, 0], [0, 0, 0]),
    "shuffle": (176.611, 6663, [238, 229, 229], [240, 240, 240]),
    "tile": (186.301, 7397, [200, 30, 30], [238, 239, 238]),
    "blur": (186.395, 7759, [200, 30, 30], [231, 237, 231]),
    "color": (186.333, 9216, [210, 174, 175], [210, 174, 175]),
    "invert": (68.531, 2219, [55, 225, 225], [15, 15, 15]),
}


@pytest.mark.parametrize("name", sorted(PINNED))
def test_every_preprocessor_is_pinned(name):
    mean, bright, a, b = PINNED[name]
    out = np.asarray(pre.run(name, fixed()))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    assert abs(float(out.mean()) - mean) < 0.5
    assert abs(int((out > 127).sum()) - bright) <= max(10, bright // 100)
    assert np.abs(out[24, 20].astype(int) - a).max() <= 3 and np.abs(out[22, 46].astype(int) - b).max() <= 3


def test_every_weight_free_preprocessor_is_pinned():
    usable = {name for name, p in pre.PREPROCESSORS.items() if p.run is not None} - {"inpaint"}
    assert usable - set(pre.REFERENCE_MODULES) == set(PINNED)
    for name in pre.REFERENCE_MODULES:  # the reference image itself: the UNet's attention does the work
        assert np.array_equal(np.asarray(pre.run(name, fixed())), np.asarray(fixed()))


def test_canny_thresholds_and_resolution():
    soft = fixed().filter(ImageFilter.GaussianBlur(2))  # weak gradients, so the thresholds matter
    loose = np.asarray(pre.run("canny", soft, threshold_a=10, threshold_b=20))
    strict = np.asarray(pre.run("canny", soft, threshold_a=200, threshold_b=250))
    assert (loose > 0).sum() > (strict > 0).sum()
    assert set(np.unique(loose)) <= {0, 255}
    # the short side is scaled to the processor resolution first
    assert pre.run("canny", fixed(), resolution=96).size == (128, 96)
    # -1 (A1111's "default") means the preprocessor's own default
    assert np.array_equal(np.asarray(pre.run("canny", fixed(), threshold_a=-1, threshold_b=-1)),
                          np.asarray(pre.run("canny", fixed())))


def test_a1111_module_names_and_weighted_annotators():
    assert pre.get("canny_edge").name == "canny" and pre.get("t2ia_color_grid").name == "color"
    assert pre.get("softedge_pidinet").name == "softedge" and pre.get("depth_midas").name == "depth"
    with pytest.raises(InvalidRequest, match="depth estimator.*preprocessor 'none'"):
        pre.run("depth_midas", fixed())
    with pytest.raises(InvalidRequest, match="unknown preprocessor"):
        pre.get("sparkles")


@pytest.mark.parametrize("size,target,mode,expected", [
    ((512, 512), (512, 512), "crop_and_resize", 512),
    ((1024, 512), (512, 512), "crop_and_resize", 512),  # cover: the short side becomes 512
    ((1024, 512), (512, 512), "resize_and_fill", 256),  # fit: the long side becomes 512
    ((256, 256), (32, 32), "just_resize", 32),
])
def test_pixel_perfect_resolution(size, target, mode, expected):
    assert pre.pixel_perfect_resolution(size, target, mode) == expected


def test_binary_maps_stay_binary_when_shrunk():
    from sfumato.control.apply import resize_map

    image = Image.new("RGB", (256, 256))
    ImageDraw.Draw(image).ellipse((40, 40, 216, 216), outline="white", width=3)
    small = np.asarray(resize_map(image, 32, 32, "just_resize"))
    assert set(np.unique(small)) == {0, 255}
    assert small[16, 5:8].max() == 255  # a 3-pixel line at 256 px survives at 32 px


@pytest.mark.slow
def test_preprocess_cli(tmp_path):
    source = tmp_path / "in.png"
    fixed().save(source)
    out = tmp_path / "map.png"
    done = subprocess.run([sys.executable, "-m", "sfumato.cli", "preprocess", "canny", str(source), "-o", str(out),
                           "--resolution", "48"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(pre.run("canny", fixed(), resolution=48)))
    bad = subprocess.run([sys.executable, "-m", "sfumato.cli", "preprocess", "openpose", str(source), "-o", str(out)],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "openpose" in bad.stderr
