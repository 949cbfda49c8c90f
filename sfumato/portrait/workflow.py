"""The "my photos → portraits" workflow (EasyPhoto / FaceChain, seed 002 §16, §20), built from sfumato's parts.

`train_portrait`: face-centred square crops of the photos with captions naming the subject, a subject LoRA trained
with `sfumato train lora` in stages, each stage's LoRA scored by identity similarity (cosine similarity of a named
feature extractor's features of generated pictures to the photos), the best `keep` merged into one LoRA
(`subject.safetensors`, equal weights, exact), everything recorded in `portrait.json`.

`generate_portrait`: a template (an image, or one generated from a style prompt with the base model), its face
region (user mask or detector), inpainted with the subject LoRA under a ControlNet unit made from the template
(canny or tile: the pose and outline stay), then a low-strength whole-image pass so the face and the rest agree.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from sfumato.errors import InvalidRequest
from sfumato.portrait.faces import Detector, ellipse_mask, face_box, mask_box, square_crop

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
RUN_FILE = "portrait.json"


def prepare_photos(photos: Path, out: Path, size: int, subject: str, detector: Detector | None = None) -> list[Path]:
    """Square face crops of every photo in `photos` as an imagefolder dataset (metadata.jsonl) in `out`."""
    files = sorted(p for p in Path(photos).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if Path(
        photos).is_dir() else []
    if not files:
        raise InvalidRequest(f"no photos (.png/.jpg/.webp) in {photos}")
    out.mkdir(parents=True, exist_ok=True)
    crops, lines = [], []
    for index, path in enumerate(files):
        try:
            with Image.open(path) as image:
                image.load()
                crop = square_crop(image, face_box(image, detector), size)
        except OSError as exc:
            raise InvalidRequest(f"{path.name}: not a readable image ({exc})") from None
        name = f"{index:03d}.png"
        crop.save(out / name)
        crops.append(out / name)
        lines.append(json.dumps({"file_name": name, "text": [subject, f"a portrait of {subject}"]}))
    (out / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return crops


def identity_similarity(extractor, generated: list[Image.Image], references: list[Image.Image]) -> float:
    """Mean cosine similarity between each generated picture's features and each reference's."""
    a = extractor.features(generated)
    b = extractor.features(references)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return float((a @ b.T).mean())


@dataclass
class PortraitSettings:
    subject: str = "sks person"
    steps: int = 400
    stages: int = 4
    keep: int = 2
    rank: int = 8
    learning_rate: float = 1e-4
    batch_size: int = 4
    resolution: int | None = None  # default: the model's native size
    extractor: str = "open-nsfw"
    samples: int = 4  # pictures generated per stage to score identity
    seed: int = 0

    def validate(self) -> "PortraitSettings":
        if self.stages < 1 or self.keep < 1 or self.keep > self.stages:
            raise InvalidRequest("stages must be >= 1 and keep in 1..stages")
        if self.steps < self.stages:
            raise InvalidRequest("steps must be at least the number of stages")
        if not self.subject.strip():
            raise InvalidRequest("the subject prompt is empty")
        return self


def train_portrait(photos: Path, output: Path, model: Path, settings: PortraitSettings,
                   detector: Detector | None = None, say: Callable[[str], None] = print) -> dict:
    """Crops → staged subject LoRA → identity-scored stages → the best merged. Returns portrait.json's content."""
    from sfumato.engine import Engine
    from sfumato.evaluation.features import load_extractor
    from sfumato.models.detect import describe
    from sfumato.models.lora_tools import merge_loras
    from sfumato.requests import GenerationRequest
    from sfumato.training.config import TrainConfig
    from sfumato.training.trainer import train

    settings.validate()
    output = Path(output)
    resolution = settings.resolution or describe(Path(model)).native_size
    crops = prepare_photos(photos, output / "data", resolution, settings.subject, detector)
    references = [Image.open(p).convert("RGB") for p in crops]
    extractor = load_extractor(settings.extractor)
    say(f"{len(crops)} photos cropped to {resolution}² in {output / 'data'}; identity by {extractor.name}")
    (output / "loras").mkdir(parents=True, exist_ok=True)
    engine = Engine(str(model))
    scores = []
    for stage in range(1, settings.stages + 1):
        steps = settings.steps * stage // settings.stages
        config = TrainConfig(method="lora", data=str(output / "data"), output=str(output / "training"),
                             model=str(model), steps=steps, batch_size=settings.batch_size,
                             learning_rate=settings.learning_rate, resolution=resolution, buckets=False, flip=True,
                             rank=settings.rank, caption_dropout=0.0, checkpoint_every=max(1, steps),
                             keep_checkpoints=1, resume=stage > 1, seed=settings.seed, log_every=10 ** 9)
        result = train(config, say=lambda _: None)
        lora = output / "loras" / f"step-{steps:06d}.safetensors"
        shutil.copy(result.output.parent / "lora-kohya.safetensors", lora)
        request = GenerationRequest(settings.subject, seed=settings.seed + 1, batch_size=settings.samples,
                                    width=resolution, height=resolution, loras=[(str(lora), 1.0)])
        images = [item.image.convert("RGB") for item in engine.generate(request).images]
        score = identity_similarity(extractor, images, references)
        scores.append({"step": steps, "lora": lora.name, "identity": round(score, 5),
                       "loss": round(float(np.mean(result.losses[-20:])), 5) if result.losses else None})
        say(f"stage {stage}/{settings.stages}: step {steps}, identity {score:.4f}")
    base_images = [i.image.convert("RGB") for i in engine.generate(GenerationRequest(
        settings.subject, seed=settings.seed + 1, batch_size=settings.samples, width=resolution,
        height=resolution)).images]
    baseline = identity_similarity(extractor, base_images, references)
    best = sorted(scores, key=lambda s: -s["identity"])[:settings.keep]
    subject_lora = output / "subject.safetensors"
    if len(best) > 1:
        merge_loras([(str(output / "loras" / s["lora"]), 1.0 / len(best)) for s in best], subject_lora)
    else:
        shutil.copy(output / "loras" / best[0]["lora"], subject_lora)
    merged_images = [i.image.convert("RGB") for i in engine.generate(GenerationRequest(
        settings.subject, seed=settings.seed + 1, batch_size=settings.samples, width=resolution, height=resolution,
        loras=[(str(subject_lora), 1.0)])).images]
    record = {"subject": settings.subject, "model": str(Path(model).resolve()), "resolution": resolution,
              "photos": len(crops), "extractor": extractor.name, "stages": scores, "kept": [s["lora"] for s in best],
              "identity_without_lora": round(baseline, 5),
              "identity_merged": round(identity_similarity(extractor, merged_images, references), 5),
              "lora": subject_lora.name, "settings": {k: v for k, v in vars(settings).items()}}
    (output / RUN_FILE).write_text(json.dumps(record, indent=2) + "\n")
    say(f"kept {', '.join(record['kept'])} → {subject_lora} (identity {record['identity_merged']:.4f}, "
        f"{baseline:.4f} without the LoRA)")
    return record


def fuse_subject(template: Image.Image, subject: Image.Image, region: Image.Image, margin: float = 1.8) -> Image.Image:
    """The template with the subject's face pasted into the region: the centre of a portrait of the subject (its
    training crops hold the face `margin` times enlarged, centred) resized to the region's box, blended by the
    region."""
    x, y, w, h = mask_box(region)
    side = min(subject.size) * min(1.0, 1.3 / margin)
    cx, cy = subject.width / 2, subject.height / 2
    face = subject.crop((round(cx - side / 2), round(cy - side / 2), round(cx + side / 2), round(cy + side / 2)))
    out = template.copy()
    out.paste(face.resize((w, h), Image.Resampling.LANCZOS), (x, y), region.convert("L").crop((x, y, x + w, y + h)))
    return out


def read_run(run: Path) -> dict:
    path = Path(run) / RUN_FILE
    if not path.exists():
        raise InvalidRequest(f"{run} is not a portrait run (no {RUN_FILE}; make one with `sfumato portrait train`)")
    return json.loads(path.read_text())


@dataclass
class PortraitResult:
    template: Image.Image
    mask: Image.Image
    inpainted: Image.Image
    final: Image.Image
    item: object  # the last pass's GeneratedImage (its request replays that pass from the steps folder)
    fused: Image.Image | None = None  # the template with the subject pasted in (before the inpainting)


def generate_portrait(run: Path, template: Path | None = None, style: str | None = None, mask: Path | None = None,
                      detector: Detector | None = None, seed: int = 0, strength: float = 0.8,
                      control: str = "canny", control_model: str | None = None, control_weight: float = 0.5,
                      polish_strength: float = 0.25, lora_weight: float = 1.0, work: Path | None = None,
                      steps: int | None = None, inpaint_fill: str = "fill", fuse: bool = True) -> PortraitResult:
    """Put the run's subject into a template: inpaint the face region under ControlNet, then polish the whole.

    The control unit applies outside the face region only (its effective region mask is the inverted face mask): it
    holds the surroundings' structure and leaves the region free for the subject (the template's own face edges
    would draw the template's face again). With `fuse` (EasyPhoto's face fusion), the subject is first drawn alone with
    its LoRA and pasted into the region, so the inpainting (at `strength`, 0.8 by default) blends a face that is
    there instead of drawing it against the template's context; without it the region starts from its surroundings
    (`inpaint_fill="fill"`)."""
    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    if template is None and not style:
        raise InvalidRequest("give a template image (--template) or a style prompt (--style)")
    if control not in ("canny", "tile", "none"):
        raise InvalidRequest("control must be canny, tile or none")
    if not 0 < strength <= 1 or not 0 <= polish_strength < 1:
        raise InvalidRequest("strength must be in (0, 1] and the polish strength in [0, 1)")
    record = read_run(run)
    lora = str(Path(run) / record["lora"])
    engine = Engine(record["model"])
    work = Path(work) if work else Path(run) / "generate"
    work.mkdir(parents=True, exist_ok=True)
    size = record["resolution"]
    if template is None:
        made = engine.generate(GenerationRequest(style, seed=seed, width=size, height=size, steps=steps))
        picture = made.images[0].image.convert("RGB")
    else:
        with Image.open(template) as opened:
            picture = opened.convert("RGB")
        picture = picture.resize((max(8, picture.width // 8 * 8), max(8, picture.height // 8 * 8)))
    template_path = work / "template.png"
    picture.save(template_path)
    if mask is not None:
        with Image.open(mask) as opened:
            region = opened.convert("L").resize(picture.size)
        mask_box(region)  # an empty mask fails here, in one line
    else:
        box = face_box(picture, detector)
        if box is None:
            raise InvalidRequest("no face found in the template: pass --mask (white = the face region)"
                                 + ("" if detector else " or --face-detector (a YuNet .onnx)"))
        region = ellipse_mask(picture.size, box)
    mask_path = work / "mask.png"
    region.save(mask_path)
    prompt = f"{record['subject']}, {style}" if style else record["subject"]
    outside_path = work / "control-region.png"
    ImageOps.invert(region.convert("L")).save(outside_path)
    controls = [] if control == "none" else [{"image": str(template_path), "module": control, "model": control_model,
                                              "weight": control_weight, "effective_region_mask": str(outside_path)}]
    init_path, fused = template_path, None
    if fuse:
        alone = engine.generate(GenerationRequest(record["subject"], seed=seed, width=size, height=size,
                                                  loras=[(lora, lora_weight)], steps=steps)).images[0].image
        init_path = work / "fused.png"
        fused = fuse_subject(picture, alone.convert("RGB"), region)
        fused.save(init_path)
    inpaint = engine.generate(GenerationRequest(
        prompt, seed=seed, width=picture.width, height=picture.height, init_image=str(init_path),
        mask=str(mask_path), strength=strength, loras=[(lora, lora_weight)], controls=controls, steps=steps,
        inpaint_fill="original" if fuse else inpaint_fill))
    inpainted = inpaint.images[0].image.convert("RGB")
    inpainted_path = work / "inpainted.png"
    inpainted.save(inpainted_path)
    final, item = inpainted, inpaint.images[0]
    if polish_strength > 0:
        polish = engine.generate(GenerationRequest(
            prompt, seed=seed, width=picture.width, height=picture.height, init_image=str(inpainted_path),
            strength=polish_strength, loras=[(lora, lora_weight)], steps=steps))
        final, item = polish.images[0].image.convert("RGB"), polish.images[0]
    return PortraitResult(picture, region, inpainted, final, item, fused)
