"""Evaluation helpers used by the embedded model's quality script (the full metrics library is issue 5)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sfumato.evaluation.features import frechet_distance, image_features, retrieval_ranks


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4000, 3))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    shifted = a + np.array([1.0, 2.0, 0.0])  # same covariance: distance = |mu|^2 = 5
    assert frechet_distance(a, shifted) == pytest.approx(5.0, rel=1e-6)
    scaled = a * 2.0  # N(0, I) vs N(0, 4I): trace(I + 4I - 2*2I) = 3 per the formula
    assert frechet_distance(a, scaled) == pytest.approx(3.0 * np.var(a, ddof=1, axis=0).mean(), rel=0.05)


def test_retrieval_ranks():
    gallery = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0.1, 0, 0], [0.9, 1, 0, 0], [0, 0, 0.2, 1]], dtype=np.float32)
    assert retrieval_ranks(queries, gallery, [0, 0, 2]).tolist() == [0, 1, 1]


def test_open_nsfw_features_are_1024_d_and_deterministic():
    images = [Image.new("RGB", (32, 32), c) for c in ((255, 0, 0), (0, 0, 255))]
    first = image_features(images)
    assert first.shape == (2, 1024) and np.isfinite(first).all()
    np.testing.assert_allclose(image_features(images), first, rtol=1e-5)
    assert np.abs(first[0] - first[1]).max() > 1e-3
