"""What a training run shows: a CSV log, validation grids and a loss curve (PNG)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from PIL import Image

CSV_HEADER = ["step", "loss", "lr", "epoch", "images_per_second"]


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
        if not self.enabled:
            return
        rows = []
        if self.csv_path.exists():
            with open(self.csv_path, newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
        with open(self.csv_path, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_HEADER)
            writer.writerows(r for r in rows if r and int(r[0]) <= step)

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
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
        steps = range(1, len(losses) + 1)
        ax.plot(steps, losses, color="#bbbbbb", linewidth=0.8, label="loss")
        ax.plot(steps, smooth(losses, max(1, len(losses) // 50)), color="#c0392b", linewidth=1.6, label="smoothed")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = self.run_dir / "loss.png"
        fig.savefig(path)
        plt.close(fig)
        return path
