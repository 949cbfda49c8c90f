"""PNG output: A1111-compatible `parameters` infotext plus the full sfumato request, and safe file names."""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from sfumato.version import __version__
from sfumato.errors import InvalidRequest, ModelNotFound, OutOfSpace, RuntimeFailure
from sfumato.requests import GenerationRequest

SFUMATO_KEY = "sfumato"
HIRES_UPSCALER_NAMES = {"latent": "Latent", "latent-nearest": "Latent (nearest)", "lanczos": "Lanczos",
                        "bicubic": "Bicubic"}


def infotext(request: GenerationRequest, seed: int, subseed: int, model_name: str, model_hash: str | tuple,
             lora_hashes: dict[str, str] | None = None, image_prompt: str | None = None,
             precision: str = "float32") -> str:
    """The A1111 `parameters` text: prompt (this image's, for dynamic prompts), negative prompt, `Key: value` pairs.

    `model_hash` is the model's short hash, or (model hash, VAE override hash or None); `precision` is written when it
    is not float32."""
    model_hash, vae_hash = model_hash if isinstance(model_hash, tuple) else (model_hash, None)
    prompt = (image_prompt or request.prompt) + "".join(f" <lora:{Path(n).stem}:{w:g}>" for n, w in request.loras)
    fields: list[tuple[str, Any]] = [
        ("Steps", request.steps), ("Sampler", request.sampler), ("CFG scale", f"{request.cfg_scale:g}"),
        ("Seed", seed), ("Size", f"{request.width}x{request.height}"), ("Model hash", model_hash),
        ("Model", model_name),
    ]
    if request.vae:  # A1111 writes both after the model
        fields += [("VAE hash", vae_hash), ("VAE", Path(request.vae).name)]
    if request.instruction_edit:
        fields.append(("Image CFG scale", f"{request.image_cfg_scale:g}"))
    elif request.init_image:
        fields.append(("Denoising strength", f"{request.strength:g}"))
        if request.mask or request.outpaint:
            fields.append(("Mask blur", request.mask_blur))
            if request.inpaint_fill == "fill":
                fields.append(("Inpaint fill", "fill"))
    if request.timestep_spacing:
        fields.append(("Timestep spacing", request.timestep_spacing))
    if request.eta is not None:
        fields.append(("Eta", f"{request.eta:g}"))
    if request.preset:
        fields.append(("Preset", request.preset))
    if request.token_merging_ratio:
        fields.append(("Token merging ratio", f"{request.token_merging_ratio:g}"))  # A1111's key
    if request.consistent > 0:
        fields.append(("Consistent", f"{request.consistent:g}"))  # style-aligned batch strength
    if request.cache_threshold > 0:
        fields.append(("Step cache", f"threshold {request.cache_threshold:g}"))
    elif request.cache_interval > 1:
        fields.append(("Step cache", f"interval {request.cache_interval}, branch {request.cache_branch}"))
    if request.subseed_strength > 0:
        fields += [("Variation seed", subseed), ("Variation seed strength", f"{request.subseed_strength:g}")]
    if request.clip_skip > 1:
        fields.append(("Clip skip", request.clip_skip))
    if request.hires_scale > 1:
        if not request.init_image:
            fields.append(("Denoising strength", f"{request.hires_strength:g}"))
        fields += [("Hires upscale", f"{request.hires_scale:g}"), ("Hires steps", request.hires_steps or request.steps),
                   ("Hires upscaler", HIRES_UPSCALER_NAMES.get(request.hires_upscaler, request.hires_upscaler))]
    if request.sd_upscale > 1:  # the keys A1111's "SD upscale" script writes, plus ours
        fields += [("SD upscale overlap", request.sd_upscale_overlap),
                   ("SD upscale upscaler", request.sd_upscale_upscaler),
                   ("SD upscale", f"{request.sd_upscale:g}"), ("SD upscale strength", f"{request.sd_upscale_strength:g}")]
    if request.init_upscaler:
        fields.append(("Init upscaler", request.init_upscaler))
    if request.colorize:
        fields.append(("Colorize", "True"))
    if request.tile:
        fields.append(("Tiling", "True"))
    if lora_hashes:
        fields.append(("Lora hashes", '"' + ", ".join(f"{k}: {v}" for k, v in lora_hashes.items()) + '"'))
    if request.template is not None and request.template != (image_prompt or request.prompt):
        fields.append(("Template", json.dumps(request.template)))  # Dynamic Prompts writes the same field
    if request.styles:
        fields.append(("Styles", json.dumps(", ".join(request.styles))))
    if request.directions:
        fields.append(("Directions", json.dumps("; ".join(f"{s:+g} ({a}) - ({b})" for a, b, s in request.directions))))
    if request.p2p_source is not None:
        fields.append(("Prompt-to-prompt", json.dumps(f"{request.p2p_source} (cross {request.p2p_cross:g}, "
                                                      f"self {request.p2p_self:g})")))
    if request.ip_adapter:
        fields.append(("IP-Adapter", json.dumps(f"{Path(request.ip_adapter).stem}: {request.ip_scale:g}, "
                                                f"{len(request.ip_images)} image(s)")))
    for index, unit in enumerate(request.controls):
        fields.append((f"ControlNet {index}", control_infotext(unit)))
    if precision != "float32":
        fields.append(("Precision", precision))
    fields.append(("Version", f"sfumato {__version__}"))
    text = prompt
    if request.negative_prompt:
        text += f"\nNegative prompt: {request.negative_prompt}"
    return text + "\n" + ", ".join(f"{key}: {value}" for key, value in fields)


CONTROL_MODE_NAMES = {"balanced": "Balanced", "prompt": "My prompt is more important",
                      "control": "ControlNet is more important"}
RESIZE_MODE_NAMES = {"just_resize": "Just Resize", "crop_and_resize": "Crop and Resize",
                     "resize_and_fill": "Resize and Fill"}


def control_infotext(unit: dict[str, Any]) -> str:
    """One unit as the A1111 ControlNet extension writes it: `"Module: canny, Model: ..., Weight: 1, ..."`."""
    def number(value: Any) -> str:
        return "-1" if value is None else f"{value:g}"

    parts = [("Module", unit["module"]), ("Model", Path(str(unit["model"])).stem), ("Weight", number(unit["weight"])),
             ("Resize Mode", RESIZE_MODE_NAMES[unit["resize_mode"]]),
             ("Processor Res", number(unit["processor_res"])), ("Threshold A", number(unit["threshold_a"])),
             ("Threshold B", number(unit["threshold_b"])), ("Guidance Start", number(unit["guidance_start"])),
             ("Guidance End", number(unit["guidance_end"])), ("Pixel Perfect", str(unit["pixel_perfect"])),
             ("Control Mode", CONTROL_MODE_NAMES[unit["control_mode"]])]
    return json.dumps(", ".join(f"{k}: {v}" for k, v in parts))


def parse_infotext(text: str) -> dict[str, str]:
    """Parse A1111 `parameters` text back into prompt, negative prompt and fields (for readers and tests)."""
    *head, last = text.strip().split("\n")
    lines, negative = [], ""
    for line in head:
        if line.startswith("Negative prompt:"):
            negative = line[len("Negative prompt:"):].strip()
        elif negative:
            negative += "\n" + line
        else:
            lines.append(line)
    result = {"prompt": "\n".join(lines), "Negative prompt": negative}
    for field in _fields(last):
        key, colon, value = field.partition(":")
        if colon and _KEY.fullmatch(key.strip()):
            result[key.strip()] = value.strip().strip('"')
    return result


_KEY = re.compile(r"[\w ]+")


def _fields(line: str) -> list[str]:
    """`Key: value, Key: "quoted, value", ...` split at the commas outside quotes (one pass over the line)."""
    fields, start, quoted, escaped = [], 0, False, False
    for i, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "," and not quoted:
            fields.append(line[start:i])
            start = i + 1
    fields.append(line[start:])
    return fields


@dataclass
class StoredRecord:
    request: GenerationRequest
    batch_index: int
    model_sha256: str | None
    parameters: str | None
    precision: str | None = None  # the dtype that made it (None: recorded before sfumato wrote it)
    sheet: list[str] | None = None  # a view sheet (`sfumato views`): its views, in order


def save_generated(item, path: Path, model_sha256: str | None) -> Path:
    """Save a `GeneratedImage` as PNG with its infotext and the sfumato record that replays it."""
    record = {"request": item.request.to_dict(), "batch_index": item.batch_index, "model_sha256": model_sha256,
              "precision": item.precision, "version": __version__}
    if item.nsfw:
        record["nsfw"] = True
    return save_png(item.image, path, item.infotext, record)


def save_png(image: Image.Image, path: Path, parameters: str | None, record: dict[str, Any] | None) -> Path:
    """Write a PNG atomically with the `parameters` text and the sfumato record (each when given)."""
    info = PngImagePlugin.PngInfo()
    if parameters:
        info.add_text("parameters", parameters)
    if record is not None:
        info.add_text(SFUMATO_KEY, json.dumps(record, sort_keys=True))
    tmp = path.with_name(path.name + ".part")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp, format="PNG", pnginfo=info)
        tmp.replace(path)  # readers see a whole PNG or none
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from None
    except BaseException:  # Ctrl-C mid-write: no half-written file stays behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def postprocess_parameters(image: Image.Image, fields: list[tuple[str, Any]]) -> str:
    """The image's own `parameters` text (if any) with A1111's postprocessing fields appended, as Extras does."""
    previous = image.info.get("parameters", "")  # PNG text chunks (kept by Image.copy, unlike `.text`)
    added = ", ".join(f"{key}: {value}" for key, value in fields)
    return f"{previous}, {added}" if previous else added


def write_error(path: Path, exc: OSError) -> RuntimeFailure:
    """The one-line error for a failed read or write (a full disk gets its own type)."""
    if exc.errno == errno.ENOSPC:
        return OutOfSpace(f"no space left on the device writing {path}; free some space and retry")
    return RuntimeFailure(f"cannot read or write {path}: {exc.strerror or exc}")


def check_writable(folder: Path) -> None:
    """Create `folder` if needed and make sure files can be written there, before any work starts."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidRequest(f"cannot create output folder {folder}: {exc.strerror or exc}") from None
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise InvalidRequest(f"output folder {folder} is not writable")


def png_parameters(path: Path) -> tuple[str, bool] | None:
    """(A1111 `parameters` text, whether a sfumato record is there too) of a readable PNG, else None."""
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}) or {})
    except (UnidentifiedImageError, OSError):
        return None
    return (text["parameters"], SFUMATO_KEY in text) if "parameters" in text else None


def read_png(path: Path) -> StoredRecord:
    if not path.is_file():
        raise ModelNotFound(f"image {path} does not exist")
    try:
        with Image.open(path) as image:
            text = dict(getattr(image, "text", {}) or {})
    except (UnidentifiedImageError, OSError) as exc:
        raise InvalidRequest(f"{path} is not a readable image ({exc})") from None
    if SFUMATO_KEY not in text:
        if "parameters" in text:
            raise InvalidRequest(f"{path} has A1111 parameters but no sfumato record, so it cannot be replayed exactly")
        raise InvalidRequest(f"{path} carries no generation metadata")
    try:
        record = json.loads(text[SFUMATO_KEY])
        request = GenerationRequest.from_dict(record["request"]).validate()
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidRequest(f"{path}: corrupt sfumato metadata ({exc})") from None
    return StoredRecord(request, int(record.get("batch_index", 0)), record.get("model_sha256"), text.get("parameters"),
                        record.get("precision"), record.get("sheet"))


def dated_output_paths(root: Path, seeds: list[int], when: _dt.date | None = None) -> list[Path]:
    """The default: `root/<date>/<n>-<seed>.png`, never overwriting."""
    return numbered_paths(root / (when or _dt.date.today()).isoformat(), seeds)


def numbered_paths(folder: Path, seeds: list[int]) -> list[Path]:
    """`folder/<n>-<seed>.png` with n continuing after the highest number already there."""
    check_writable(folder)
    numbers = [int(m.group(1)) for p in folder.iterdir() if (m := re.match(r"(\d+)-", p.name))]
    start = max(numbers, default=-1) + 1
    return [folder / f"{start + i:05d}-{seed}.png" for i, seed in enumerate(seeds)]


def check_output(output: Path) -> None:
    """Refuse an output that cannot be written (bad suffix, uncreatable or read-only folder) before generating."""
    if output.is_dir() or not output.suffix:
        check_writable(output)
        return
    if output.suffix.lower() != ".png":
        raise InvalidRequest(f"output {output} must be a .png file or a folder")
    check_writable(output.parent)
    if output.exists() and not os.access(output, os.W_OK):
        raise InvalidRequest(f"output file {output} is not writable")


def explicit_output_paths(output: Path, seeds: list[int]) -> list[Path]:
    """`-o OUT.png`: OUT.png for one image, OUT-0.png, OUT-1.png ... for several; `-o FOLDER`: numbered files.

    Callers check the output with `check_output` before generating."""
    if output.is_dir() or not output.suffix:
        return numbered_paths(output, seeds)
    if len(seeds) == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(len(seeds))]
