"""`sfumato data scenes`: a procedural world of emoji scenes with composed captions, reproducible from a seed.

Each image is drawn from its own generator (`random.Random(f"{seed}:{index}")`), so any image can be remade
alone and the set does not depend on how many processes rendered it. A scene is one of five kinds:

- `emoji`: one emoji centred on white, captioned by its CLDR name ("red apple") as the old embedded model was;
- `single`: one object, maybe with a size, a place (left/right/top/bottom/centre), a colour and a background;
- `count`: two to four of one object ("three blue cars");
- `pair`: two objects and a relation ("a cat to the left of a dog", above, below, next to, and), sometimes each
  with its own colour (colour attribution);
- `group`: three or four different objects.

Words are only written for what the picture shows; what a caption leaves out varies freely (positions, sizes,
styles, colours of untinted objects), which is what lets a model trained on it vary with the seed.

The held-out split (`held_out_*`): unordered object pairs, colour-object pairs and count-object pairs chosen by a
fixed hash of their words; training scenes never contain them, evaluation prompts use only them.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from PIL import Image, ImageDraw

from sfumato.errors import InvalidRequest
from sfumato.training.emoji_art import STYLES, Sprites, available_styles
from sfumato.training.scene_vocab import (BACKGROUNDS, COLOURS, GRADIENTS, MEASURES, NUMBERS, SceneObject, article,
                                          colour_name, plural, tint, vocabulary)

KINDS = {"emoji": 0.12, "single": 0.30, "count": 0.15, "pair": 0.30, "group": 0.13}
SIZES = {"small": 18, "medium": 26, "large": 38}  # sprite side on a 64 px canvas
PLACES = {"on the left": ((0.12, 0.35), (0.25, 0.75)), "on the right": ((0.65, 0.88), (0.25, 0.75)),
          "at the top": ((0.3, 0.7), (0.12, 0.35)), "at the bottom": ((0.3, 0.7), (0.65, 0.88)),
          "in the centre": ((0.42, 0.58), (0.42, 0.58))}
RELATIONS = ("to the left of", "to the right of", "above", "below", "next to", "and")
CONVERSE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
            "below": "above", "next to": "next to", "and": "and"}
ASPECTS = ((64, 64), (64, 64), (64, 64), (64, 64), (96, 64), (64, 96))


def _hash(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def held_out_pair(a: str, b: str) -> bool:
    """One unordered object pair in 25 never appears together in training."""
    first, second = sorted((a, b))
    return _hash(f"pair:{first}|{second}") % 25 == 0


def held_out_colour(colour: str, name: str) -> bool:
    """One colour-object pair in 8 is never drawn in training."""
    return _hash(f"colour:{colour}|{name}") % 8 == 0


def held_out_count(count: int, name: str) -> bool:
    """One count-object pair in 8 is never drawn in training."""
    return _hash(f"count:{count}|{name}") % 8 == 0


@dataclass
class Placed:
    obj: SceneObject
    box: tuple[int, int, int, int]
    colour: str | None  # the tint, None for the sprite's own colours
    size: str | None = None  # a size word the caption uses
    place: str | None = None  # a place phrase the caption uses


@dataclass
class Scene:
    kind: str
    width: int
    height: int
    style: str
    background: str  # a colour name or a gradient name
    objects: list[Placed] = field(default_factory=list)
    relation: str | None = None
    captions: list[str] = field(default_factory=list)

    def contains_held_out(self) -> bool:
        names = [p.obj.short for p in self.objects]
        if any(held_out_pair(a, b) for i, a in enumerate(names) for b in names[i + 1:] if a != b):
            return True
        if any(p.colour and held_out_colour(p.colour, p.obj.short) for p in self.objects):
            return True
        return self.kind == "count" and held_out_count(len(self.objects), names[0])


def _box(rng: random.Random, width: int, height: int, side: int, xr=(0.0, 1.0), yr=(0.0, 1.0)):
    cx = rng.uniform(*xr) * width
    cy = rng.uniform(*yr) * height
    x0 = int(round(min(max(cx - side / 2, 0), width - side)))
    y0 = int(round(min(max(cy - side / 2, 0), height - side)))
    return (x0, y0, x0 + side, y0 + side)


def _overlap(a, b, slack: int = 2) -> bool:
    return a[0] < b[2] - slack and b[0] < a[2] - slack and a[1] < b[3] - slack and b[1] < a[3] - slack


def _free_boxes(rng: random.Random, width: int, height: int, sides: list[int]) -> list | None:
    boxes: list = []
    for side in sides:
        for _ in range(50):
            box = _box(rng, width, height, side)
            if not any(_overlap(box, other) for other in boxes):
                boxes.append(box)
                break
        else:
            return None
    return boxes


def _side(rng: random.Random, name: str, scale: float) -> int:
    return max(8, round(SIZES[name] * scale * rng.uniform(0.88, 1.12)))


class SceneSampler:
    """Draws scenes from the vocabulary; `sample(index)` is the same scene for the same seed and index."""

    def __init__(self, objects: list[SceneObject], styles: list[str], seed: int = 0, held_out: bool = False):
        if not styles:
            raise InvalidRequest("no emoji art found: install Debian's fonts-noto-color-emoji (and the npm art, see "
                                 "sfumato/training/emoji_art.py)")
        self.objects, self.styles, self.seed, self.held_out = objects, styles, seed, held_out
        self.tintable = [o for o in objects if o.tintable]

    def sample(self, index: int) -> Scene:
        rng = random.Random(f"{self.seed}:{index}")
        if self.held_out:
            return self._held_out_scene(rng)
        kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
        for _ in range(100):
            scene = getattr(self, f"_{kind}")(rng)
            if not scene.contains_held_out():
                scene.captions = captions(scene, rng)
                return scene
        raise RuntimeError("could not draw a scene outside the held-out split")  # pragma: no cover

    def _held_out_scene(self, rng: random.Random) -> Scene:
        """Only scenes with a held-out pair, colour-object or count-object combination: the evaluation's references
        (`--held-out`), never training data."""
        kinds = {k: w for k, w in KINDS.items() if k != "emoji"}
        for _ in range(10000):
            scene = getattr(self, f"_{rng.choices(list(kinds), weights=list(kinds.values()))[0]}")(rng)
            if scene.contains_held_out():
                scene.captions = captions(scene, rng)
                return scene
        raise RuntimeError("could not draw a held-out scene")  # pragma: no cover

    def _canvas(self, rng: random.Random, kind: str, background: bool = True) -> Scene:
        width, height = rng.choice(ASPECTS)
        roll = rng.random()
        bg = "white" if not background or roll < 0.45 else rng.choice(BACKGROUNDS[1:]) if roll < 0.85 \
            else rng.choice(list(GRADIENTS))
        return Scene(kind, width, height, rng.choice(self.styles), bg)

    def _colour(self, rng: random.Random, obj: SceneObject, p: float, avoid: str | None = None) -> str | None:
        if not obj.tintable or rng.random() >= p:
            return None
        return rng.choice([c for c in COLOURS if c != avoid])

    def _emoji(self, rng: random.Random) -> Scene:
        scene = self._canvas(rng, "emoji", background=False)
        scene.width = scene.height = 64
        side = rng.randint(44, 52)
        obj = rng.choice(self.objects)
        scene.objects.append(Placed(obj, _box(rng, 64, 64, side, (0.48, 0.52), (0.48, 0.52)), None))
        return scene

    def _single(self, rng: random.Random) -> Scene:
        scene = self._canvas(rng, "single")
        scale = min(scene.width, scene.height) / 64
        obj = rng.choice(self.objects)
        size = rng.choice(list(SIZES)) if rng.random() < 0.5 else None
        side = _side(rng, size, scale) if size else max(10, round(rng.uniform(14, 44) * scale))
        place = rng.choice(list(PLACES)) if rng.random() < 0.5 else None
        xr, yr = PLACES[place] if place else ((0.0, 1.0), (0.0, 1.0))
        colour = self._colour(rng, obj, 0.35, avoid=scene.background)
        scene.objects.append(Placed(obj, _box(rng, scene.width, scene.height, side, xr, yr), colour, size, place))
        return scene

    def _count(self, rng: random.Random) -> Scene:
        scene = self._canvas(rng, "count")
        scale = min(scene.width, scene.height) / 64
        obj = rng.choice(self.objects)
        n = rng.choice((2, 3, 4))
        size = "small" if n > 2 or rng.random() < 0.5 else "medium"
        colour = self._colour(rng, obj, 0.3, avoid=scene.background)
        base = _side(rng, size, scale)
        boxes = _free_boxes(rng, scene.width, scene.height, [base] * n)
        if boxes is None:
            return self._count(rng)
        scene.objects = [Placed(obj, box, colour) for box in boxes]
        return scene

    def _pair(self, rng: random.Random) -> Scene:
        scene = self._canvas(rng, "pair")
        scale = min(scene.width, scene.height) / 64
        a, b = rng.sample(self.objects, 2)
        relation = rng.choice(RELATIONS)
        both = rng.random() < 0.2
        ca = self._colour(rng, a, 1.0 if both else 0.2, avoid=scene.background)
        cb = self._colour(rng, b, 1.0 if both else 0.2, avoid=ca or scene.background)
        sa, sb = (_side(rng, rng.choice(("small", "medium")), scale) for _ in range(2))
        lo, hi = (0.12, 0.4), (0.6, 0.88)
        mid = (0.3, 0.7)
        if relation in ("to the left of", "to the right of", "next to"):
            first, second = (lo, hi) if relation != "to the right of" else (hi, lo)
            if relation == "next to" and rng.random() < 0.5:
                first, second = second, first
            y = rng.uniform(*mid)
            ba = _box(rng, scene.width, scene.height, sa, first, (y - 0.08, y + 0.08))
            bb = _box(rng, scene.width, scene.height, sb, second, (y - 0.08, y + 0.08))
        elif relation in ("above", "below"):
            first, second = (lo, hi) if relation == "above" else (hi, lo)
            x = rng.uniform(*mid)
            ba = _box(rng, scene.width, scene.height, sa, (x - 0.08, x + 0.08), first)
            bb = _box(rng, scene.width, scene.height, sb, (x - 0.08, x + 0.08), second)
        else:
            boxes = _free_boxes(rng, scene.width, scene.height, [sa, sb])
            if boxes is None:
                return self._pair(rng)
            ba, bb = boxes
        scene.objects = [Placed(a, ba, ca), Placed(b, bb, cb)]
        scene.relation = relation
        return scene

    def _group(self, rng: random.Random) -> Scene:
        scene = self._canvas(rng, "group")
        scale = min(scene.width, scene.height) / 64
        objs = rng.sample(self.objects, rng.choice((3, 4)))
        boxes = _free_boxes(rng, scene.width, scene.height, [_side(rng, "small", scale) for _ in objs])
        if boxes is None:
            return self._group(rng)
        scene.objects = [Placed(o, box, self._colour(rng, o, 0.15, avoid=scene.background)) for o, box in zip(objs, boxes)]
        return scene


def noun_phrase(obj: SceneObject, colour: str | None = None, count: int = 1, size: str | None = None,
                word: str | None = None) -> str:
    """"a small blue car", "three apples"."""
    noun = word or obj.short
    adjectives = [w for w in (size, colour) if w]
    if noun in MEASURES:
        one, many = MEASURES[noun]
        return " ".join([NUMBERS[count], many] if count > 1 else [one]) + " " + " ".join([*adjectives, noun])
    if count > 1:
        return " ".join([NUMBERS[count], *adjectives, plural(noun)])
    words = " ".join([*adjectives, noun])
    return f"{article(words)} {words}"


def _background_phrase(background: str, rng: random.Random) -> str:
    if background in GRADIENTS:
        return GRADIENTS[background][0]
    a = article(background)
    return rng.choice((f"on {a} {background} background", f"on {background}", f"with {a} {background} background",
                       f"against {a} {background} background"))


def _with_style(text: str, style: str, rng: random.Random) -> str:
    word = STYLES[style].name
    if not word:
        return text
    return rng.choice((f"{text}, {word} style", f"a {word} picture of {text}", f"{text}, {word}"))


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def captions(scene: Scene, rng: random.Random) -> list[str]:
    """A full caption, a paraphrase, and (half the time) a minimal one naming only the objects."""
    objs = scene.objects
    if scene.kind == "emoji":
        name = objs[0].obj.name
        sentence = f"an emoji of {article(name)} {name}"
        return [name, _with_style(sentence, scene.style, rng) if rng.random() < 0.6 else sentence]
    if scene.kind == "count":
        p = objs[0]
        core = [noun_phrase(p.obj, p.colour, len(objs)), noun_phrase(p.obj, p.colour, len(objs),
                                                                     word=rng.choice(p.obj.words()))]
        minimal = noun_phrase(p.obj, None, len(objs))
    elif scene.kind == "single":
        p = objs[0]
        core = [" ".join(w for w in (noun_phrase(p.obj, p.colour, size=p.size), p.place) if w),
                " ".join(w for w in (noun_phrase(p.obj, p.colour, size=p.size, word=rng.choice(p.obj.words())),
                                     p.place) if w)]
        minimal = p.obj.short if rng.random() < 0.5 else noun_phrase(p.obj)
    elif scene.kind == "pair":
        a, b = objs
        na, nb = noun_phrase(a.obj, a.colour), noun_phrase(b.obj, b.colour)
        core = [f"{na} {scene.relation} {nb}", f"{nb} {CONVERSE[scene.relation]} {na}"]
        minimal = f"{noun_phrase(a.obj)} and {noun_phrase(b.obj)}"
    else:
        phrases = [noun_phrase(p.obj, p.colour) for p in objs]
        core = [_join(phrases), _join(rng.sample(phrases, len(phrases)))]
        minimal = _join([noun_phrase(p.obj) for p in objs])
    mention_bg = scene.background != "white" or rng.random() < 0.3
    out = []
    for text in core:
        if mention_bg:
            text = f"{text} {_background_phrase(scene.background, rng)}"
        out.append(_with_style(text, scene.style, rng) if rng.random() < 0.5 else text)
    if rng.random() < 0.5 and minimal not in out:
        out.append(minimal)
    return list(dict.fromkeys(out))


class Renderer:
    def __init__(self, sprites: Sprites):
        self.sprites = sprites

    @lru_cache(maxsize=8192)
    def sprite(self, obj: SceneObject, style: str, side: int, colour: str | None) -> Image.Image:
        image = self.sprites.sized(obj.emoji, style, side)
        return tint(image, colour) if colour else image

    @lru_cache(maxsize=8192)
    def natural_colour(self, obj: SceneObject, style: str) -> str:
        return colour_name(self.sprites.sized(obj.emoji, style, 48))

    def background(self, scene: Scene) -> Image.Image:
        w, h = scene.width, scene.height
        if scene.background in COLOURS:
            return Image.new("RGB", (w, h), COLOURS[scene.background][0])
        _, top, bottom, ground = GRADIENTS[scene.background]
        image = Image.new("RGB", (w, h))
        draw = ImageDraw.Draw(image)
        for y in range(h):
            t = y / max(1, h - 1)
            draw.line([(0, y), (w, y)], fill=tuple(round(a + (b - a) * t) for a, b in zip(top, bottom)))
        if ground:
            draw.rectangle([0, round(h * 0.72), w, h], fill=ground)
        return image

    def render(self, scene: Scene) -> Image.Image:
        image = self.background(scene).convert("RGBA")
        for p in scene.objects:
            side = p.box[2] - p.box[0]
            image.alpha_composite(self.sprite(p.obj, scene.style, side, p.colour), (p.box[0], p.box[1]))
        return image.convert("RGB")

    def record(self, scene: Scene, file_name: str) -> dict:
        return {"file_name": file_name, "text": scene.captions, "kind": scene.kind, "width": scene.width,
                "height": scene.height, "style": scene.style, "background": scene.background,
                "relation": scene.relation,
                "objects": [{"name": p.obj.name, "short": p.obj.short, "category": p.obj.category,
                             "colour": p.colour or self.natural_colour(p.obj, scene.style), "tinted": bool(p.colour),
                             "box": list(p.box)} for p in scene.objects]}


def _render_range(args) -> list[dict]:
    out, seed, styles, start, stop, held_out = args
    objects = vocabulary()
    sampler = SceneSampler(objects, styles, seed, held_out)
    renderer = Renderer(Sprites(styles))
    records = []
    for i in range(start, stop):
        scene = sampler.sample(i)
        file_name = f"images/{i // 1000:03d}/{i:06d}.png"
        path = Path(out) / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        renderer.render(scene).save(path, optimize=False, compress_level=1)
        records.append(renderer.record(scene, file_name))
    return records


def build_scene_dataset(out_dir: Path, count: int = 60000, seed: int = 0, processes: int = 1,
                        styles: list[str] | None = None, progress: Callable[[int, int], None] | None = None,
                        held_out: bool = False) -> dict:
    """Render `count` scenes into `out_dir` (imagefolder layout + `datasheet.json`); returns the datasheet. With
    `held_out`, only scenes of the held-out split (references for `sfumato eval fid`, never for training)."""
    styles = styles or available_styles()
    if not styles:
        raise InvalidRequest("no emoji art found: install Debian's fonts-noto-color-emoji")
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    chunk = 500
    jobs = [(str(out_dir), seed, styles, s, min(count, s + chunk), held_out) for s in range(0, count, chunk)]
    records: list[dict] = []
    if processes > 1:
        import multiprocessing

        with multiprocessing.get_context("spawn").Pool(processes) as pool:
            for part in pool.imap(_render_range, jobs):
                records.extend(part)
                if progress:
                    progress(len(records), count)
    else:
        for job in jobs:
            records.extend(_render_range(job))
            if progress:
                progress(len(records), count)
    with open(out_dir / "metadata.jsonl", "w", encoding="utf-8") as meta:
        for record in records:
            meta.write(json.dumps(record, ensure_ascii=False) + "\n")
    sheet = datasheet(records, styles, seed)
    (out_dir / "datasheet.json").write_text(json.dumps(sheet, indent=2, ensure_ascii=False), encoding="utf-8")
    return sheet


def datasheet(records: list[dict], styles: list[str], seed: int) -> dict:
    """Counts per kind, category, style, background, relation and canvas; the vocabulary, licences and split."""
    objects = vocabulary()
    names = [o.short for o in objects]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    return {
        "images": len(records), "seed": seed,
        "kinds": dict(Counter(r["kind"] for r in records)),
        "styles": {s: {"count": sum(r["style"] == s for r in records), "licence": STYLES[s].licence} for s in styles},
        "backgrounds": dict(Counter(r["background"] for r in records)),
        "relations": dict(Counter(r["relation"] for r in records if r["relation"])),
        "canvases": dict(Counter(f"{r['width']}x{r['height']}" for r in records)),
        "objects per image": dict(Counter(len(r["objects"]) for r in records)),
        "categories": dict(Counter(o["category"] for r in records for o in r["objects"])),
        "tinted objects": sum(o["tinted"] for r in records for o in r["objects"]),
        "vocabulary": {"objects": len(objects), "per category": dict(Counter(o.category for o in objects)),
                       "colours": list(COLOURS), "backgrounds": BACKGROUNDS + list(GRADIENTS)},
        "held out": {"object pairs": sum(held_out_pair(a, b) for a, b in pairs), "of pairs": len(pairs),
                     "colour-object pairs": sum(held_out_colour(c, o.short) for c in COLOURS for o in objects
                                                if o.tintable),
                     "count-object pairs": sum(held_out_count(n, o.short) for n in (2, 3, 4) for o in objects)},
        "licences": {"emoji names": "Unicode CLDR (Unicode License v3)",
                     **{s: STYLES[s].licence for s in styles}},
    }
