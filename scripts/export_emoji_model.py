"""Export a `sfumato train scratch` run (its latest checkpoint's EMA weights) as the embedded model, fp16.

    python scripts/export_emoji_model.py RUN_DIR [--out sfumato/models/embedded/sfumato-emoji]
        [--sampler "DPM++ 2M"] [--steps 20] [--cfg-scale 5] [--float32]

`--float32` writes a full-precision base for a further fine-tuning run (the cooldown stage in the model card).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sfumato.models.embedded import EMBEDDED_DIR, export_trained
from sfumato.training.checkpoints import latest_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--out", type=Path, default=EMBEDDED_DIR)
    parser.add_argument("--sampler", default="DPM++ 2M")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cfg-scale", type=float, default=5.0)
    parser.add_argument("--float32", action="store_true", help="keep fp32 weights (a base for `sfumato train full`)")
    args = parser.parse_args()
    checkpoint = latest_checkpoint(args.run)
    defaults = {"default_sampler": args.sampler, "default_steps": args.steps, "default_cfg_scale": args.cfg_scale}
    out = export_trained(args.run / "model", args.out, defaults, checkpoint, half=not args.float32)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out} from {checkpoint.name if checkpoint else 'the final weights'}: {size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
