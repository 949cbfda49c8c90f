"""Step previews cost nothing unless a client watches, and the default (cheap) preview is a linear latent->RGB map
fitted to the model's own VAE."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from sfumato.engine import Engine  # noqa: E402
from sfumato.models.embedded import embedded_model  # noqa: E402
from sfumato.requests import GenerationRequest  # noqa: E402
from sfumato.server.app import create_app  # noqa: E402
from sfumato.server.settings import ServerSettings  # noqa: E402
from test_server import _wait  # noqa: E402

LOCAL = "http://127.0.0.1:7860"
JOB = {"prompt": "a cat", "width": 64, "height": 64, "steps": 12, "seed": 1}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["cheap", "full", "off"])
def test_previews_only_while_a_client_watches(tmp_path, sd1, monkeypatch, mode):
    app = create_app(ServerSettings(model=str(sd1), data_dir=tmp_path / "server", safety="off", preview=mode))
    engine = app.state.service.engine
    calls = []
    real = engine.preview_image
    monkeypatch.setattr(engine, "preview_image", lambda latents, full=False: calls.append(full) or real(latents, full))
    with TestClient(app, base_url=LOCAL) as client:
        assert _wait(client, client.post("/api/v1/jobs", json=JOB).json()["id"])["status"] == "completed"
        assert calls == []  # nobody watched: no preview was decoded
        job_id = client.post("/api/v1/jobs", json={**JOB, "seed": 2}).json()["id"]
        with client.stream("GET", f"/api/v1/jobs/{job_id}/events") as stream:
            text = "".join(stream.iter_text())
    previews = [block for block in text.split("\n\n") if '"preview"' in block]
    if mode == "off":
        assert calls == [] and previews == []
    else:
        assert calls and set(calls) == {mode == "full"} and previews


@pytest.mark.skipif(embedded_model("sfumato-emoji") is None, reason="sfumato-emoji is not in this checkout")
def test_cheap_preview_resembles_the_decoded_image():
    """On sfumato-emoji the fitted map stays within a pinned distance of the full decode, at a fraction of it."""
    engine = Engine()
    captured = []
    engine.generate(GenerationRequest("ghost", seed=1, model="sfumato-emoji"),
                    preview=lambda latents: captured.append(latents.clone()))
    cheap, full = engine.preview_image(captured[-1]), engine.preview_image(captured[-1], full=True)
    assert cheap.size == full.size == (32, 32)
    difference = np.abs(np.asarray(cheap, dtype=float) - np.asarray(full, dtype=float)).mean()
    assert difference < 35  # measured 27.0 of 255 (the map is linear; the VAE is not)
    flat = np.asarray(full, dtype=float)
    flat_difference = np.abs(flat - flat.mean(axis=(0, 1))).mean()  # a frame of the image's mean colour
    assert difference < flat_difference  # it shows structure, not just the average colour


@pytest.mark.skipif(embedded_model() is None, reason="the embedded model is not in this checkout")
def test_a_model_can_ask_for_full_previews():
    """sfumato-scenes' 8-channel latents are not linear in colour (the fitted map was off by 55-64 of 255, worse
    than a flat frame), so its sfumato.json asks for the full decode, which its tiny decoder makes cheap."""
    engine = Engine()
    captured = []
    engine.generate(GenerationRequest("red apple", seed=1), preview=lambda latents: captured.append(latents.clone()))
    assert engine._loaded.info.settings["preview"] == "full"
    quick, full = engine.preview_image(captured[-1]), engine.preview_image(captured[-1], full=True)
    assert np.array_equal(np.asarray(quick), np.asarray(full)) and engine._loaded.preview_factors is None
