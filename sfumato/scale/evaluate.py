"""Evaluation at scale: a `sfumato batch` manifest as the image set, and features extracted on Ray Data.

The Ray path runs the very extractor of the single-process path (`evaluation.features.load_extractor`, CLIP's
`ClipScorer`) in an actor pool, on batches cut at the same boundaries (the extractor's batch size, in image order),
so the metrics computed from its features are the single-process numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sfumato.errors import InvalidRequest
from sfumato.evaluation import images as ev_images


def manifest_file(source: Path) -> Path | None:
    """The manifest a path names: `…/manifest.parquet`, or a batch output folder holding one; else None."""
    source = Path(source)
    if source.is_file() and source.suffix == ".parquet":
        return source
    if source.is_dir() and (source / "manifest.parquet").is_file():
        return source / "manifest.parquet"
    return None


def image_set(source: Path, what: str = "--fake") -> tuple[list[Path], list[str] | None]:
    """Image paths of a folder (name order) or a manifest (manifest order, made images only), and the manifest's
    prompts (None for a folder: captions come from the folder's own metadata)."""
    manifest = manifest_file(source)
    if manifest is None:
        return ev_images.image_files(source, f"{what} folder"), None
    import pyarrow.parquet as pq

    rows = [r for r in pq.read_table(manifest, columns=["path", "request"]).to_pylist() if r["path"]]
    if not rows:
        raise InvalidRequest(f"{manifest} lists no images")
    paths = [manifest.parent / r["path"] for r in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise InvalidRequest(f"{len(missing)} images of {manifest} are missing (e.g. {missing[0]}); run the batch "
                             "again to make them")
    return paths, [json.loads(r["request"])["prompt"] for r in rows]


def load(paths: list[Path]):
    return [ev_images._open(p) for p in paths]


class FeatureWorker:
    """An actor: one extractor (or CLIP scorer), called with chunks of image paths (and captions)."""

    def __init__(self, spec: str, kind: str):
        from sfumato.scale.cluster import fit_threads

        fit_threads()
        self.kind = kind
        if kind == "clip":
            from sfumato.evaluation.clip_score import ClipScorer

            self.scorer = ClipScorer(spec)
        else:
            from sfumato.evaluation.features import load_extractor

            self.extractor = load_extractor(spec)

    def __call__(self, batch: dict) -> dict:
        values = []
        for paths, captions in zip(batch["paths"], batch["captions"]):  # one chunk = one batch of the network
            images = load([Path(str(p)) for p in paths])
            if self.kind == "clip":
                values.append(self.scorer.scores(images, [str(c) for c in captions])[:, None])
            elif self.kind == "logits":
                values.append(self.extractor.logits(images))
            else:
                values.append(self.extractor.features(images))
        return {"chunk": np.asarray(batch["chunk"]), "value": [v.astype(np.float32).tobytes() for v in values],
                "shape": [np.asarray(v.shape) for v in values]}


def ray_values(spec: str, kind: str, paths: list[Path], address: str, replicas: int = 2, batch_size: int = 32,
               captions: list[str] | None = None, progress=None) -> np.ndarray:
    """Features (`kind` features|logits) or CLIP scores (`clip`) of every image, computed by an actor pool on Ray
    Data, one network batch of `batch_size` images per chunk, returned in image order."""
    import ray

    from sfumato.scale.cluster import connect

    connect(address)
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    chunks = [{"chunk": k, "paths": [str(Path(p).resolve()) for p in paths[i:i + batch_size]],
               "captions": list(captions[i:i + batch_size]) if captions else [""] * len(paths[i:i + batch_size])}
              for k, i in enumerate(range(0, len(paths), batch_size))]
    dataset = ray.data.from_items(chunks, override_num_blocks=min(len(chunks), 8 * replicas))
    mapped = dataset.map_batches(FeatureWorker, fn_constructor_kwargs={"spec": spec, "kind": kind}, batch_size=1,
                                 compute=ray.data.ActorPoolStrategy(size=replicas), num_cpus=1, batch_format="numpy")
    out: list[np.ndarray | None] = [None] * len(chunks)
    for batch in mapped.iter_batches(batch_size=None, batch_format="numpy"):
        for chunk, raw, shape in zip(batch["chunk"], batch["value"], batch["shape"]):
            out[int(chunk)] = np.frombuffer(raw, dtype=np.float32).reshape(tuple(int(d) for d in shape))
            if progress:
                progress(int(shape[0]))
    if any(v is None for v in out):
        raise InvalidRequest("Ray returned features for only part of the images")
    return np.concatenate(out)  # type: ignore[arg-type]


def batch_size_for(spec: str) -> int:
    """The extractor's own batch size: Ray cuts batches where the single-process loop does."""
    from sfumato.evaluation.features import load_extractor

    return load_extractor(spec).batch_size
