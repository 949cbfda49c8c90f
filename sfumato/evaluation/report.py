"""`sfumato eval report`: one Markdown page with the tables and plots of an evaluation folder.

A folder collects what `eval steps --out DIR` writes (steps.csv, sweep.json, plots, sample grids)
and what the single-number commands append with `--save DIR` (metrics.jsonl).
"""

from __future__ import annotations

import json
from pathlib import Path

from sfumato.errors import InvalidRequest
from sfumato.evaluation.sweep import LOWER_IS_BETTER, read_csv

METRICS_FILE = "metrics.jsonl"


def save_metric(folder: Path, record: dict) -> None:
    """Append one result (metric, value, extractor, inputs) to the folder's metrics.jsonl."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def choose_default(rows: list[dict], metric: str, tolerance: float = 0.02) -> dict:
    """The cheapest (sampler, steps) whose `metric` is within `tolerance` (relative) of the best one."""
    scored = [r for r in rows if metric in r]
    if not scored:
        raise InvalidRequest(f"no {metric} column in this sweep")
    lower = metric in LOWER_IS_BETTER
    best = min(r[metric] for r in scored) if lower else max(r[metric] for r in scored)
    margin = abs(best) * tolerance
    good = [r for r in scored if (r[metric] <= best + margin if lower else r[metric] >= best - margin)]
    return min(good, key=lambda r: r["seconds_per_image"])


def _table(rows: list[dict]) -> list[str]:
    columns = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = [f"{r[c]:.4g}" if isinstance(r.get(c), float) else str(r.get(c, "")) for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_report(folder: Path, metric: str | None = None) -> Path:
    """Write `folder/report.md` and return its path."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InvalidRequest(f"{folder} is not an evaluation folder")
    lines = [f"# Evaluation report: {folder.name}", ""]
    sweep_file, csv_file, metrics_file = folder / "sweep.json", folder / "steps.csv", folder / METRICS_FILE
    if not (csv_file.exists() or metrics_file.exists()):
        raise InvalidRequest(f"{folder} holds no steps.csv or {METRICS_FILE} (run `sfumato eval steps --out` "
                             "or an eval command with --save first)")
    if sweep_file.exists():
        info = json.loads(sweep_file.read_text())
        lines += [f"Model: `{info['model']}`; {len(info['prompts'])} prompts, seed {info['seed']}; "
                  f"reference {info['reference_sampler']} at {info['reference_steps']} steps; "
                  f"features: {info.get('extractor') or 'none'}.", ""]
    if csv_file.exists():
        rows = read_csv(csv_file)
        lines += ["## Quality vs steps", "", *_table(rows), ""]
        metric = metric or next((m for m in ("top1", "fid", "clip_score", "ref_ssim") if m in rows[0]), None)
        if metric:
            pick = choose_default(rows, metric)
            lines += [f"**Cheapest setting within 2 % of the best {metric}:** {pick['sampler']}, "
                      f"{int(pick['steps'])} steps ({pick[metric]:.4g}, {pick['seconds_per_image']:.3g} s/image).", ""]
        for plot in sorted(folder.glob("*-vs-steps.png")):
            lines += [f"![{plot.stem}]({plot.name})", ""]
    if metrics_file.exists():
        records = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
        lines += ["## Metrics", "", *_table(records), ""]
    pictures = [p for p in sorted(folder.glob("*.png")) if not p.name.endswith("-vs-steps.png")]
    if pictures:
        lines += ["## Images", ""] + [f"![{p.stem}]({p.name})" for p in pictures] + [""]
    path = folder / "report.md"
    path.write_text("\n".join(lines), encoding="utf-8")
    return path
