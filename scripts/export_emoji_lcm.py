"""Export a `sfumato train lcm --lcm-form full` run on the embedded model as sfumato-emoji-lcm (fp16).

    python scripts/export_emoji_lcm.py RUN_DIR [--steps 2] [--out sfumato/models/embedded/sfumato-emoji-lcm]

The run's latest checkpoint (or its final model) replaces the embedded model's UNet; `sfumato.json` says
`"preset": "lcm"` with the chosen number of steps, so the model samples with LCM at CFG 1 by itself.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sfumato.models.embedded import EMBEDDED_DIR, export_trained
from sfumato.training.checkpoints import latest_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out", type=Path, default=EMBEDDED_DIR.parent / "sfumato-emoji-lcm")
    args = parser.parse_args()
    checkpoint = latest_checkpoint(args.run)
    defaults = {"preset": "lcm", "steps": args.steps, "default_sampler": "LCM", "default_steps": args.steps,
                "default_cfg_scale": 1.0}
    out = export_trained(EMBEDDED_DIR, args.out, defaults, checkpoint)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out} from {checkpoint.name if checkpoint else 'the base'}: {size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
