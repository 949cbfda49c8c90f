"""Export a `sfumato train controlnet` run (a checkpoint's EMA weights) as a shipped `BASE-canny`, fp16.

    python scripts/export_emoji_controlnet.py RUN_DIR [--checkpoint step-0005000] [--float32]
        [--base sfumato-scenes] [--out sfumato/models/embedded/BASE-canny]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from sfumato.control.models import EMBEDDED_CONTROLNETS
from sfumato.models.embedded import embedded_model
from sfumato.training.checkpoints import latest_checkpoint


def _embedding_channels(weights: dict) -> tuple[int, ...]:
    """The conditioning embedding's channels, read from the trained weights (emoji: 16, 32, 96; scenes: 16, 32, 96,
    256 — one more halving for 64 px maps onto 8×8 latents)."""
    prefix = "controlnet_cond_embedding."
    channels = [weights[prefix + "conv_in.weight"].shape[0]]
    k = 1
    while prefix + f"blocks.{k}.weight" in weights:
        channels.append(weights[prefix + f"blocks.{k}.weight"].shape[0])
        k += 2
    return tuple(channels)


def export(run: Path, out: Path, checkpoint: Path | None = None, half: bool = True,
           base_name: str = "sfumato-scenes") -> Path:
    from diffusers import ControlNetModel, UNet2DConditionModel

    checkpoint = checkpoint or latest_checkpoint(run)
    if checkpoint is None:
        raise SystemExit(f"no checkpoint in {run / 'checkpoints'}")
    base = embedded_model(base_name)
    unet = UNet2DConditionModel.from_pretrained(str(base), subfolder="unet", torch_dtype=torch.float32)
    weights = load_file(str(checkpoint / "ema.safetensors")) if (checkpoint / "ema.safetensors").exists() else \
        load_file(str(checkpoint / "trainable.safetensors"))
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=_embedding_channels(weights))
    net.load_state_dict(weights, strict=True)
    net.to(torch.float16 if half else torch.float32).save_pretrained(str(out), safe_serialization=True)
    (out / "sfumato.json").write_text(json.dumps({"preprocessor": "canny", "base": base_name,
                                                  "checkpoint": checkpoint.name}, indent=2))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--checkpoint", help="a checkpoint folder name (default: the latest)")
    parser.add_argument("--base", default="sfumato-scenes", help="the embedded model it was trained for")
    parser.add_argument("--out", type=Path, help="default: sfumato/models/embedded/BASE-canny")
    parser.add_argument("--float32", action="store_true", help="keep fp32 weights (a start for further training)")
    args = parser.parse_args()
    checkpoint = args.run / "checkpoints" / args.checkpoint if args.checkpoint else None
    out = export(args.run, args.out or EMBEDDED_CONTROLNETS / f"{args.base}-canny", checkpoint,
                 half=not args.float32, base_name=args.base)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{out}: {size / 2**20:.2f} MiB")


if __name__ == "__main__":
    main()
