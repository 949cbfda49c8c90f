"""Export a `sfumato train scratch` run (its latest checkpoint's EMA weights) as the embedded model, fp16.

    python scripts/export_emoji_model.py RUN_DIR [--out sfumato/models/embedded/sfumato-scenes]
        [--sampler "DPM++ 2M"] [--steps 20] [--cfg-scale 5] [--float32] [--checkpoint step-N] [--vae VAE_DIR]
        [--fast-preset lcm] [--fast-steps 8] [--full-preview]

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
    parser.add_argument("--checkpoint", help="a checkpoint folder name (default: the latest)")
    parser.add_argument("--vae", type=Path, help="an AutoencoderKL folder replacing the run's (a fine-tuned decoder)")
    parser.add_argument("--fast-preset", help="`--fast`'s preset for this model (sfumato.json `fast`)")
    parser.add_argument("--fast-steps", type=int, help="`--fast`'s steps for this model")
    parser.add_argument("--full-preview", action="store_true",
                        help="step previews decode with the VAE (latents no linear map reads; a tiny decoder)")
    args = parser.parse_args()
    checkpoint = args.run / "checkpoints" / args.checkpoint if args.checkpoint else latest_checkpoint(args.run)
    defaults = {"default_sampler": args.sampler, "default_steps": args.steps, "default_cfg_scale": args.cfg_scale}
    if args.full_preview:
        defaults["preview"] = "full"
    if args.fast_preset or args.fast_steps:  # a preset (lcm) or just fewer steps of the default sampler
        defaults["fast"] = {"preset": args.fast_preset, "steps": args.fast_steps or 4}
    out = export_trained(args.run / "model", args.out, defaults, checkpoint, half=not args.float32, vae=args.vae)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out} from {checkpoint.name if checkpoint else 'the final weights'}: {size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
