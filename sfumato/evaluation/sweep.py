"""`sfumato eval steps`: quality against steps and seconds, per sampler -> CSV and PNG plots.

For every (sampler, steps) each prompt is generated once (seed = base seed + prompt index; prompts
run as one batch) and scored against:
- a converged reference (`ref_psnr`, `ref_ssim`): the same prompt and seed at `reference_steps` with
  the reference sampler. Ancestral and SDE samplers converge to other images, so read these for
  the deterministic samplers;
- with `real` (a folder of reference images): Fréchet distance of the extractor's features, and,
  when the folder's `metadata.jsonl` labels its images with the prompts, top-1 / top-5 retrieval
  adherence of each image to its prompt's reference;
- with `clip_model`: CLIP score.
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from sfumato.errors import InvalidRequest
from sfumato.evaluation import metrics
from sfumato.evaluation.features import load_extractor
from sfumato.requests import GenerationRequest

LOWER_IS_BETTER = {"fid", "seconds_per_image"}


@dataclass
class SweepConfig:
    model: str | None
    prompts: list[str]
    samplers: list[str]
    steps: list[int]
    seed: int = 0
    cfg_scale: float | None = None
    reference_sampler: str = "DPM++ 2M"
    reference_steps: int = 100
    real: str | None = None
    extractor: str = "open-nsfw"
    clip_model: str | None = None
    metadata: dict = field(default_factory=dict)


def read_prompts(path: Path) -> list[str]:
    """One prompt per line; blank lines and lines starting with # are skipped."""
    if not Path(path).is_file():
        raise InvalidRequest(f"prompts file {path} does not exist")
    prompts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines()]
    prompts = [p for p in prompts if p and not p.startswith("#")]
    if not prompts:
        raise InvalidRequest(f"prompts file {path} holds no prompts")
    return prompts


def labelled_reference(folder: Path) -> tuple[list[Image.Image], list[str | None]]:
    """Reference images and labels (see `labelled_reference_paths`)."""
    paths, labels = labelled_reference_paths(folder)
    return [Image.open(p).convert("RGB") for p in paths], labels


def labelled_reference_paths(folder: Path) -> tuple[list[Path], list[str | None]]:
    """Reference image files and labels: the rows of `folder/metadata.jsonl` (`file_name`, and `name` or the first
    `text` as label; files may sit in subfolders), else the images directly in `folder`, unlabelled."""
    from sfumato.evaluation.images import image_files

    folder = Path(folder)
    meta = folder / "metadata.jsonl"
    if not meta.is_file():
        files = image_files(folder, "reference folder")
        return files, [None] * len(files)
    paths, labels = [], []
    root = folder.resolve()
    for line in meta.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        path = (folder / row["file_name"]).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise InvalidRequest(f"{meta}: {row['file_name']!r} is not an image inside {folder}")
        text = row.get("name") or row.get("text")
        paths.append(path)
        labels.append(text[0] if isinstance(text, list) else text)
    if not paths:
        raise InvalidRequest(f"{meta} lists no images")
    return paths, labels


class _Scorer:
    """Everything the sweep compares generated images against, prepared once."""

    def __init__(self, config: SweepConfig, size: tuple[int, int], say: Callable[[str], None]):
        self.extractor = self.real_features = self.clip = None
        self.targets: list[int] | None = None
        if config.real:
            self.extractor = load_extractor(config.extractor)
            images, labels = labelled_reference(Path(config.real))
            images = [im if im.size == size else im.resize(size, Image.Resampling.LANCZOS) for im in images]
            say(f"embedding {len(images)} reference images with {self.extractor.name}")
            self.real_features = self.extractor.features(images)
            index = {label: i for i, label in enumerate(labels) if label}
            if all(p in index for p in config.prompts):
                self.targets = [index[p] for p in config.prompts]
        if config.clip_model:
            from sfumato.evaluation.clip_score import ClipScorer

            self.clip = ClipScorer(config.clip_model)

    def score(self, images: list[Image.Image], reference: list[Image.Image], prompts: list[str]) -> dict[str, float]:
        row = {"ref_psnr": float(np.mean([min(metrics.psnr(a, b), 100.0) for a, b in zip(images, reference)])),
               "ref_ssim": float(np.mean([metrics.ssim(a, b) for a, b in zip(images, reference)]))}
        if self.extractor is not None:
            feats = self.extractor.features(images)
            if len(images) >= 2:
                row["fid"] = metrics.frechet_distance(feats, self.real_features)
            if self.targets is not None:
                ranks = metrics.retrieval_ranks(feats, self.real_features, self.targets)
                row["top1"], row["top5"] = metrics.top_k_accuracy(ranks, 1), metrics.top_k_accuracy(ranks, 5)
        if self.clip is not None:
            row["clip_score"] = float(self.clip.scores(images, prompts).mean())
        return row


def run_sweep(engine, config: SweepConfig, out_dir: Path, say: Callable[[str], None] = print) -> list[dict]:
    """Run the sweep, write `steps.csv`, `sweep.json` and the plots into `out_dir`; return the rows."""
    from tqdm import tqdm

    if not config.samplers or not config.steps:
        raise InvalidRequest("give at least one sampler and one step count")
    out_dir.mkdir(parents=True, exist_ok=True)

    def batch(sampler: str, steps: int) -> tuple[list[Image.Image], float]:
        requests = [GenerationRequest(prompt=p, model=config.model, sampler=sampler, steps=steps,
                                      cfg_scale=config.cfg_scale, seed=config.seed + i)
                    for i, p in enumerate(config.prompts)]
        started = time.perf_counter()
        results = engine.generate_many(requests)
        return [r.images[0].image for r in results], (time.perf_counter() - started) / len(requests)

    say(f"reference: {config.reference_sampler}, {config.reference_steps} steps")
    engine.generate_many([GenerationRequest(prompt=config.prompts[0], model=config.model, steps=1)])  # load, warm up
    reference, _ = batch(config.reference_sampler, config.reference_steps)
    scorer = _Scorer(config, reference[0].size, say)
    rows = []
    for sampler, steps in tqdm([(s, n) for s in config.samplers for n in config.steps], desc="sweep", unit="run",
                               disable=None):
        images, seconds = batch(sampler, steps)
        rows.append({"sampler": sampler, "steps": steps, "seconds_per_image": seconds,
                     **scorer.score(images, reference, config.prompts)})
        if steps == max(config.steps):
            from sfumato.training.report import image_grid

            image_grid(images[:16], columns=8).save(out_dir / f"samples-{_slug(sampler)}-{steps}.png")
    write_csv(rows, out_dir / "steps.csv")
    info = {**asdict(config), "extractor": scorer.extractor.name if scorer.extractor else None,
            "model": str(engine.describe(config.model).path)}
    (out_dir / "sweep.json").write_text(json.dumps(info, indent=2))
    plot_sweep(rows, out_dir, info["extractor"])
    return rows


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text).strip("-").lower()


def write_csv(rows: list[dict], path: Path) -> None:
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return [{k: (v if k == "sampler" else float(v)) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def plot_sweep(rows: list[dict], out_dir: Path, extractor: str | None) -> list[Path]:
    """One PNG per metric: metric vs steps and metric vs seconds per image, a line per sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric_names = [k for k in rows[0] if k not in ("sampler", "steps", "seconds_per_image")]
    samplers = list(dict.fromkeys(r["sampler"] for r in rows))
    paths = []
    for metric in metric_names:
        fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
        for sampler in samplers:
            mine = sorted((r for r in rows if r["sampler"] == sampler and metric in r), key=lambda r: r["steps"])
            left.plot([r["steps"] for r in mine], [r[metric] for r in mine], marker="o", label=sampler)
            right.plot([r["seconds_per_image"] for r in mine], [r[metric] for r in mine], marker="o", label=sampler)
        label = metric + (f" ({extractor})" if metric in ("fid", "top1", "top5") and extractor else "")
        label += " (lower is better)" if metric in LOWER_IS_BETTER else ""
        for axis, xlabel in ((left, "steps"), (right, "seconds per image (batched)")):
            axis.set_xlabel(xlabel)
            axis.set_ylabel(label)
            axis.grid(alpha=0.3)
        left.legend()
        fig.suptitle(f"{metric} vs steps and time")
        fig.tight_layout()
        path = out_dir / f"{metric}-vs-steps.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths
