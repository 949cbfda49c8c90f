"""Measure how well the embedded model follows control maps with its shipped ControlNet (edge F1, with vs without).

    python scripts/control_adherence.py [--data DATA] [--controlnet PATH] [--count 64] \
        [--json benchmarks/control_adherence_scenes.json] [--figure docs/controlnet-scenes.png]
    SFUMATO_MODEL=sfumato/models/embedded/sfumato-emoji python scripts/control_adherence.py \
        [--json benchmarks/control_adherence.json] [--figure docs/controlnet-emoji.png]   # the earlier default

Cases: hand-drawn outlines (circle, triangle, square, star, heart, diamond, cross, arrow) with emoji prompts, and,
given the emoji dataset (`sfumato data emoji DATA --base-only`), the Canny map of one emoji's render with the
name of another (mismatched: does the map win?) and with its own name (matched).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
from pathlib import Path

from PIL import Image

from sfumato.engine import Engine
from sfumato.evaluation.control import Case, adherence, drawn_cases
from sfumato.requests import GenerationRequest

def emoji_cases(data: Path, folder: Path, count: int) -> list[Case]:
    from sfumato.control import preprocessors

    rows = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines() if line.strip()]
    rng = random.Random(0)
    picked = rng.sample(rows, min(count, len(rows)))
    cases = []
    for k, row in enumerate(picked):
        render = Image.open(data / row["file_name"]).convert("RGB").resize((32, 32), Image.Resampling.LANCZOS)
        path = folder / f"map-{k}.png"
        preprocessors.run("canny", render).save(path)
        other = picked[(k + len(picked) // 2) % len(picked)]["name"]
        cases.append(Case(other, str(path), "none", seed=k, kind="emoji-mismatched"))
        cases.append(Case(row["name"], str(path), "none", seed=k, kind="emoji-matched"))
    return cases


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="the emoji dataset (adds render-map cases)")
    parser.add_argument("--controlnet", help="a ControlNet to measure (default: the default model's shipped one)")
    parser.add_argument("--count", type=int, default=64, help="emoji render cases")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--figure", type=Path)
    args = parser.parse_args()
    from tqdm import tqdm

    engine = Engine()
    with tempfile.TemporaryDirectory() as tmp:
        cases = drawn_cases(Path(tmp))
        if args.data:
            cases += emoji_cases(args.data, Path(tmp), args.count)
        bar = tqdm(total=len(cases), unit="case")
        summary = adherence(engine, GenerationRequest(prompt=""), cases, args.controlnet,
                            progress=lambda done, total: bar.update(1))
        bar.close()
        if args.figure:
            figure(engine, cases, args.controlnet, args.figure)
    from sfumato.engine import default_model

    summary["controlnet"] = args.controlnet or f"{Path(default_model()).name}-canny"  # the model's shipped one
    for kind in [k for k in summary if isinstance(summary[k], dict) and "with" in summary[k]]:
        s = summary[kind]
        print(f"{kind:18s} edge F1 without {s['without']:.3f}  with {s['with']:.3f}  (+{s['with'] - s['without']:.3f}, "
              f"{s['count']} cases)")
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in summary.items() if k != "rows"}, indent=2) + "\n")


def figure(engine, cases: list[Case], controlnet: str | None, out: Path) -> None:
    """Rows of (control map | without | with) for the drawn shapes, 4x nearest-neighbour."""
    chosen = [c for c in cases if c.kind == "drawn"][::9][:8]
    cell = 128
    sheet = Image.new("RGB", (3 * cell, len(chosen) * cell), "white")
    for row, case in enumerate(chosen):
        request = GenerationRequest(prompt=case.prompt, seed=case.seed)
        unit = {"image": case.image, "module": case.module, "model": controlnet}
        with_unit = engine.generate(GenerationRequest(prompt=case.prompt, seed=case.seed, controls=[unit]))
        plain = engine.generate(request).images[0].image
        sheet.paste(Image.open(case.image).convert("RGB").resize((cell, cell)), (0, row * cell))
        sheet.paste(plain.resize((cell, cell), Image.Resampling.NEAREST), (cell, row * cell))
        sheet.paste(with_unit.images[0].image.resize((cell, cell), Image.Resampling.NEAREST), (2 * cell, row * cell))
    out.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(out)


if __name__ == "__main__":
    main()
