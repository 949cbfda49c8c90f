"""What a training run shows: a CSV log, validation grids, a loss curve and validation retrieval scores (PNG)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from PIL import Image

CSV_HEADER = ["step", "loss", "lr", "epoch", "images_per_second"]
RETRIEVAL_HEADER = ["step", "extractor", "examples", "top1", "top5"]


def image_grid(images: list[Image.Image], columns: int | None = None) -> Image.Image:
    """Images (same size) tiled row by row."""
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    width, height = images[0].size
    grid = Image.new("RGB", (columns * width, rows * height), "white")
    for i, image in enumerate(images):
        grid.paste(image, ((i % columns) * width, (i // columns) * height))
    return grid


def smooth(values: list[float], window: int) -> list[float]:
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


class TrainLog:
    """`log.csv`, `samples/step-N.png` and `loss.png` in the run folder (written by the main process only)."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        self.run_dir, self.enabled = run_dir, enabled
        self.csv_path = run_dir / "log.csv"

    def truncate(self, step: int) -> None:
        """Drop rows after `step` (a resumed run rewrites them)."""
        if self.enabled:
            _rewrite(self.csv_path, CSV_HEADER, [r for r in _rows(self.csv_path) if int(r[0]) <= step])

    def row(self, step: int, loss: float, lr: float, epoch: int, rate: float) -> None:
        if self.enabled:
            with open(self.csv_path, "a", newline="") as f:
                csv.writer(f).writerow([step, f"{loss:.6f}", f"{lr:.3e}", epoch, f"{rate:.2f}"])

    def grid(self, step: int, images: list[Image.Image]) -> Path | None:
        if not self.enabled or not images:
            return None
        path = self.run_dir / "samples" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image_grid(images).save(path)
        return path

    def loss_curve(self, losses: list[float]) -> Path | None:
        if not self.enabled or not losses:
            return None
        fig, ax = _figure()
        steps = range(1, len(losses) + 1)
        ax.plot(steps, losses, color="#bbbbbb", linewidth=0.8, label="loss")
        ax.plot(steps, smooth(losses, max(1, len(losses) // 50)), color="#c0392b", linewidth=1.6, label="smoothed")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        return _save(fig, ax, self.run_dir / "loss.png")

    def retrieval(self, step: int, scores: dict) -> Path | None:
        """Append validation retrieval scores to `validation.csv` (rows from an earlier attempt at or after `step`
        are dropped) and redraw `validation.png`."""
        if not self.enabled:
            return None
        path = self.run_dir / "validation.csv"
        rows = [r for r in _rows(path) if int(r[0]) < step]
        rows.append([str(step), scores["extractor"], str(scores["examples"]), f"{scores['top1']:.4f}",
                     f"{scores['top5']:.4f}"])
        _rewrite(path, RETRIEVAL_HEADER, rows)
        fig, ax = _figure()
        steps = [int(r[0]) for r in rows]
        ax.plot(steps, [100 * float(r[3]) for r in rows], marker="o", color="#c0392b", label="top-1")
        ax.plot(steps, [100 * float(r[4]) for r in rows], marker="o", color="#2471a3", label="top-5")
        ax.set_xlabel("step")
        ax.set_ylabel(f"retrieval among {rows[-1][2]} (%)")
        ax.set_title(f"validation retrieval ({rows[-1][1]})")
        ax.set_ylim(0, 100)
        return _save(fig, ax, self.run_dir / "validation.png")


def _rows(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return [r for r in list(csv.reader(f))[1:] if r]


def _rewrite(path: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4), dpi=100)


def _save(fig, ax, path: Path) -> Path:
    import matplotlib.pyplot as plt

    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
