"""The shipped sfumato-emoji-canny ControlNet: size, default use with the embedded model, and a pinned gain in edge
agreement with hand-drawn outlines (edge F1 of the image's Canny edges against the outline, with vs without)."""

from __future__ import annotations

import pytest

from sfumato.control.models import embedded_controlnet
from sfumato.models.embedded import embedded_model

pytestmark = pytest.mark.skipif(embedded_model("sfumato-emoji") is None or embedded_controlnet("sfumato-emoji") is None,
                                reason="sfumato-emoji or its ControlNet is not in this checkout")
SHAPES = ["circle", "triangle", "star", "small-circle-top-left", "small-circle-bottom-right"]
PROMPTS = ["red apple", "grinning face", "sun", ""]
MIN_GAIN = 0.45  # measured 0.570 (F1 0.335 -> 0.905 over these 20 cases, every case better)


@pytest.fixture(scope="module")
def engine():
    from sfumato.engine import Engine

    return Engine(model="sfumato-emoji")  # named: sfumato-scenes is the default (tests/test_scenes_controlnet.py)


def test_shipped_controlnet_is_small_and_listed():
    from sfumato.control.models import list_control_models, load_control_model

    path = embedded_controlnet("sfumato-emoji")
    assert sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) <= 15 * 2**20
    assert path in list_control_models()
    net = load_control_model(path)
    assert net.kind == "controlnet" and net.preprocessor == "canny" and net.base == "sfumato-emoji"


@pytest.mark.slow
def test_outlines_are_followed_better_with_the_shipped_controlnet(engine, tmp_path):
    from sfumato.evaluation.control import outline_gain

    measured = outline_gain(engine, tmp_path, PROMPTS, SHAPES)
    assert measured["gain"] >= MIN_GAIN and measured["better"] >= 0.9, measured
