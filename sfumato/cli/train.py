"""`sfumato train METHOD` and `sfumato data`: training runs and the datasets they read."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from sfumato.errors import InvalidRequest


def add_parsers(commands) -> None:
    _add_train_parser(commands)
    data = commands.add_parser("data", help="build training datasets")
    data.add_argument("dataset", choices=["emoji", "scenes"],
                      help="emoji: Noto Color Emoji renders with CLDR captions; scenes: composed 64 px emoji scenes "
                           "(objects, counts, colours, places, relations, backgrounds) in every installed art style")
    data.add_argument("output", type=Path)
    data.add_argument("--size", type=int, default=64, help="emoji: image side")
    data.add_argument("--base-only", action="store_true", help="emoji: skip skin-tone variants (1,870 base emoji)")
    data.add_argument("--limit", type=int, help="emoji: at most this many")
    data.add_argument("--count", type=int, default=60000, help="scenes: how many")
    data.add_argument("--seed", type=int, default=0, help="scenes: the same seed makes the same images")
    data.add_argument("--processes", type=int, default=1, help="scenes: render in this many processes")
    data.add_argument("--held-out", action="store_true",
                      help="scenes: only scenes of the held-out split (evaluation references, never training data)")
    data.set_defaults(run=cmd_data)


def _add_train_parser(commands) -> None:
    """`sfumato train METHOD`: one flag per TrainConfig field (defaults < --config TOML < flags)."""
    import typing

    from sfumato.training.config import METHODS, TrainConfig

    train = commands.add_parser("train", help="train: scratch, full, lora, dreambooth, oft, textual-inversion, vae, "
                                              "vqgan")
    train.add_argument("method", choices=[*METHODS, "vae", "vqgan"])
    train.add_argument("--config", type=Path, help="TOML file of training settings (data only)")
    train.add_argument("--vae-config", help="`train vae`: AutoencoderKL config.json overriding the small default")
    train.add_argument("--kl-weight", type=float, default=1e-6, help="`train vae`: KL term weight")
    train.add_argument("--vae-crop", type=int, help="`train vae`: train on random crops of this side (cheaper)")
    train.add_argument("--decoder-only", action="store_true",
                       help="`train vae --vae DIR`: fine-tune only DIR's decoder (its latent space stays)")
    vq = train.add_argument_group("train vqgan")
    vq.add_argument("--codebook-size", type=int, default=256, help="codes in the codebook")
    vq.add_argument("--disc-start", type=int, default=500, help="steps before the PatchGAN discriminator joins")
    vq.add_argument("--disc-weight", type=float, default=0.1, help="weight of the adversarial term")
    vq.add_argument("--restart-every", type=int, default=100, help="dead-code restart window in steps (0: never)")
    vq.add_argument("--holdout", type=float, default=0.1, help="share of images held out for the reported metrics")
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "method":
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        if hint is bool:
            train.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS)
        elif hint == list[str]:
            train.add_argument(flag, action="append", default=argparse.SUPPRESS)
        else:
            kind = next((t for t in (int, float) if t is hint or t in typing.get_args(hint)), str)
            train.add_argument(flag, type=kind, default=argparse.SUPPRESS)
    train.set_defaults(run=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:

    from sfumato.training.config import FIELDS, TrainConfig, load_toml

    values = load_toml(args.config) if args.config else {}
    values.update({k: v for k, v in vars(args).items() if k in FIELDS and k != "method"})
    method = args.method
    missing = [k for k in ("data", "output") if not values.get(k)]
    if missing:
        raise InvalidRequest(f"`train {method}` needs --{' and --'.join(missing)}")
    config = TrainConfig(method="full" if method in ("vae", "vqgan") else method, **values)
    if method == "vqgan":
        from sfumato.training.vqgan import VQGANSettings, train_vqgan

        settings = VQGANSettings(args.codebook_size, args.disc_start, args.disc_weight, args.restart_every, args.holdout)
        print(train_vqgan(dataclasses.replace(config, model=None), settings, say=lambda m: print(m, file=sys.stderr)))
        return 0
    if method == "vae":
        from sfumato.training.vae import train_vae

        print(train_vae(dataclasses.replace(config, model=None), args.vae_config, args.kl_weight,
                        say=lambda m: print(m, file=sys.stderr), crop=args.vae_crop,
                        decoder_only=args.decoder_only))
        return 0
    from sfumato.training.trainer import train

    result = train(config, say=lambda m: print(m, file=sys.stderr))
    if not result.main_process:
        return 0
    print(json.dumps({"output": str(result.output), "steps": result.steps, "final_loss": result.losses[-1] if result.losses else None,
                      "images_per_second": round(result.images_per_second, 2), "images": result.dataset_size, "processes": result.world_size,
                      "skipped": result.skipped, "dropped": result.dropped, "stopped": result.stopped,
                      "cache": dataclasses.asdict(result.cache)}, indent=2))
    return 0


def cmd_data(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from sfumato.training.emoji_data import build_emoji_dataset

    bar = tqdm(unit="img", file=sys.stderr, disable=None)

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    if args.dataset == "scenes":
        from sfumato.training.scenes import build_scene_dataset

        if args.count < 1 or args.processes < 1:
            raise InvalidRequest("--count and --processes must be at least 1")
        sheet = build_scene_dataset(args.output, args.count, args.seed, args.processes, progress=progress,
                                    held_out=args.held_out)
        bar.close()
        print(f"{sheet['images']} scenes in {args.output} (metadata.jsonl, datasheet.json); styles: "
              + "; ".join(f"{s}: {v['licence']}" for s, v in sheet["styles"].items()))
        return 0
    count = build_emoji_dataset(args.output, args.size, args.base_only, args.limit, progress)
    bar.close()
    print(f"{count} images in {args.output} (metadata.jsonl); Noto Color Emoji, Apache-2.0")
    return 0
