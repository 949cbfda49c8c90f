"""The procedural scenes world (`sfumato data scenes`), its detector and `eval compositional`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sfumato.training.emoji_data import EMOJI_TEST_PATH, FONT_PATH

needs_noto = pytest.mark.skipif(not (FONT_PATH.exists() and EMOJI_TEST_PATH.exists()),
                                reason="apt-get install fonts-noto-color-emoji unicode-data")


@pytest.fixture(scope="module")
def objects():
    if not EMOJI_TEST_PATH.exists():
        pytest.skip("apt-get install unicode-data")
    from sfumato.training.scene_vocab import vocabulary

    return vocabulary()


def test_vocabulary_has_300_objects_in_seven_categories_with_unique_short_names(objects):
    shorts = [o.short for o in objects]
    assert len(objects) >= 300 and len(set(shorts)) == len(shorts)
    assert {o.category for o in objects} == {"animals", "plants", "food", "buildings", "vehicles", "weather",
                                             "objects"}
    by_name = {o.name: o for o in objects}
    assert by_name["automobile"].short == "car" and by_name["red apple"].short == "red apple"
    assert not by_name["red apple"].tintable and by_name["automobile"].tintable


def test_noun_phrases_count_and_measure(objects):
    from sfumato.training.scene_vocab import article, plural
    from sfumato.training.scenes import noun_phrase

    by_short = {o.short: o for o in objects}
    assert [plural(w) for w in ("mouse", "bus", "cherry", "hot dog", "knife")] == \
        ["mice", "buses", "cherries", "hot dogs", "knives"]
    assert noun_phrase(by_short["car"], "blue") == "a blue car"
    assert noun_phrase(by_short["car"], count=3) == "three cars"
    assert noun_phrase(by_short["jeans"], "blue") == "a pair of blue jeans"
    assert noun_phrase(by_short["jeans"], count=2) == "two pairs of jeans"
    assert noun_phrase(by_short["egg"]) == "an egg" and article("orange") == "an"


@needs_noto
def test_held_out_scenes_each_carry_a_held_out_combination(objects):
    """`sfumato data scenes --held-out`: the FID references, every one outside the training split, reproducible."""
    from sfumato.training.scenes import SceneSampler

    sampler = SceneSampler(objects, ["noto"], seed=3, held_out=True)
    scenes = [sampler.sample(i) for i in range(60)]
    assert all(s.contains_held_out() for s in scenes) and {s.kind for s in scenes} >= {"pair", "count", "single"}
    assert SceneSampler(objects, ["noto"], seed=3, held_out=True).sample(7).captions == scenes[7].captions
    assert not any(SceneSampler(objects, ["noto"], seed=3).sample(i).contains_held_out() for i in range(60))


@needs_noto
def test_scenes_are_reproducible_and_their_captions_match_the_layout(objects):
    from sfumato.training.scene_vocab import NUMBERS
    from sfumato.training.scenes import SceneSampler, held_out_colour, held_out_count, held_out_pair

    sampler = SceneSampler(objects, ["noto"], seed=3)
    scenes = [sampler.sample(i) for i in range(400)]
    again = SceneSampler(objects, ["noto"], seed=3).sample(17)
    assert (again.captions, [p.box for p in again.objects]) == (scenes[17].captions, [p.box for p in scenes[17].objects])
    other = SceneSampler(objects, ["noto"], seed=4)
    assert sum(other.sample(i).captions != scenes[i].captions for i in range(50)) > 40
    kinds = {s.kind for s in scenes}
    assert kinds == {"emoji", "single", "count", "pair", "group"}
    for s in scenes:
        first = s.captions[0]
        names = [p.obj.short for p in s.objects]
        assert not any(held_out_pair(a, b) for a in names for b in names if a != b)
        for p in s.objects:
            assert 0 <= p.box[0] < p.box[2] <= s.width and 0 <= p.box[1] < p.box[3] <= s.height
            if p.colour:
                assert p.colour in first and not held_out_colour(p.colour, p.obj.short)
        if s.kind == "emoji":
            assert first == s.objects[0].obj.name
        if s.kind == "count":
            assert first.split()[0] == NUMBERS[len(s.objects)] and not held_out_count(len(s.objects), names[0])
            assert len(set(names)) == 1
        if s.kind == "pair":
            a, b = [((p.box[0] + p.box[2]) / 2, (p.box[1] + p.box[3]) / 2) for p in s.objects]
            assert s.relation in first
            if s.relation == "to the left of":
                assert a[0] < b[0]
            if s.relation == "to the right of":
                assert a[0] > b[0]
            if s.relation == "above":
                assert a[1] < b[1]
            if s.relation == "below":
                assert a[1] > b[1]
        if s.background not in ("white",):
            assert any(s.background in c or c.endswith(("sky", "grass", "night")) for c in s.captions)


@needs_noto
def test_data_scenes_cli_writes_images_metadata_and_datasheet(tmp_path, capsys):
    from sfumato.cli import main

    assert main(["data", "scenes", str(tmp_path / "a"), "--count", "24", "--seed", "5"]) == 0
    assert "24 scenes" in capsys.readouterr().out
    records = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 24
    for r in records:
        image = Image.open(tmp_path / "a" / r["file_name"])
        assert image.size == (r["width"], r["height"]) and image.mode == "RGB"
        assert r["text"] and all(isinstance(t, str) and t for t in r["text"])
    sheet = json.loads((tmp_path / "a" / "datasheet.json").read_text())
    assert sheet["images"] == 24 and sum(sheet["kinds"].values()) == 24
    assert sheet["vocabulary"]["objects"] >= 300 and "noto" in sheet["styles"]
    assert sheet["held out"]["object pairs"] > 0
    assert main(["data", "scenes", str(tmp_path / "b"), "--count", "24", "--seed", "5"]) == 0
    assert (tmp_path / "b" / "metadata.jsonl").read_text() == (tmp_path / "a" / "metadata.jsonl").read_text()
    assert main(["data", "scenes", str(tmp_path / "c"), "--count", "0"]) == 2


@needs_noto
def test_tint_recolours_a_sprite_to_the_named_colour(objects):
    from sfumato.training.emoji_art import Sprites
    from sfumato.training.scene_vocab import colour_name, tint

    sprites = Sprites(["noto"])
    by_short = {o.short: o for o in objects}
    car = sprites.sized(by_short["car"].emoji, "noto", 48)
    assert colour_name(car) == "red"
    for colour in ("blue", "green", "yellow", "purple"):
        assert colour_name(tint(car, colour)) == colour
    assert np.array_equal(np.asarray(tint(car, "blue"))[..., 3], np.asarray(car)[..., 3])  # the shape is kept


def test_art_styles_are_found_in_npm_folders_with_or_without_fe0f(tmp_path):
    from sfumato.training.emoji_art import Sprites, available_styles, style_folder
    from sfumato.training.emoji_data import Emoji

    folder = tmp_path / "node_modules" / "emoji-datasource-twitter" / "img" / "twitter" / "64"
    folder.mkdir(parents=True)
    Image.new("RGBA", (64, 64), (0, 0, 0, 0)).save(folder / "2600.png")
    square = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    square.paste((200, 30, 30, 255), (10, 20, 30, 60))
    square.save(folder / "1f34e.png")
    roots = [tmp_path / "node_modules"]
    assert style_folder("flat", roots) == folder and style_folder("3d", roots) is None
    assert "flat" in available_styles(roots) and "3d" not in available_styles(roots)
    sprites = Sprites(["flat"], roots)
    sun = Emoji((0x2600, 0xFE0F), "sun", "", "")  # the file drops the variation selector
    apple = Emoji((0x1F34E,), "red apple", "", "")
    assert sprites.has(sun, "flat") and sprites.has(apple, "flat")
    assert not sprites.has(Emoji((0x1F600,), "grinning face", "", ""), "flat")
    trimmed = sprites.full(apple, "flat")
    assert trimmed.size == (40, 40)  # cropped to the 20x40 opaque box, padded square


@needs_noto
def test_detector_trains_saves_and_reads_scenes(tmp_path):
    import torch

    from sfumato.evaluation.scene_detector import accuracy, detect, load_detector, save_detector, train_detector
    from sfumato.training.scenes import build_scene_dataset

    build_scene_dataset(tmp_path / "data", count=40, seed=1, styles=["noto"])
    losses = []
    model = train_detector(tmp_path / "data", steps=6, batch=8, progress=lambda s, t, loss: losses.append(loss))
    assert len(losses) == 6 and all(np.isfinite(losses))
    path = save_detector(model, tmp_path / "det.safetensors")
    loaded = load_detector(path)
    x = torch.rand(2, 3, 64, 96)
    for a, b in zip(model(x), loaded(x)):
        assert torch.equal(a, b)
    image = Image.open(next((tmp_path / "data" / "images").rglob("*.png")))
    reading = detect(loaded, [image], threshold=0.0)[0]
    assert reading.background in loaded.backgrounds and reading.detections  # threshold 0: every peak
    scores = accuracy(loaded, tmp_path / "data", [json.loads(line) for line in
                                                   (tmp_path / "data" / "metadata.jsonl").read_text().splitlines()][:8])
    assert set(scores) == {"object recall", "object colour", "background", "exact counts"}
    with pytest.raises(Exception, match="not found"):
        load_detector(tmp_path / "missing.safetensors")


def test_compositional_cases_come_from_the_held_out_split_and_score_readings(objects):
    from sfumato.evaluation.compositional import CATEGORIES, Case, cases, diversity
    from sfumato.evaluation.scene_detector import Detection, SceneReading
    from sfumato.training.scenes import held_out_colour, held_out_count, held_out_pair

    case_list = cases(per_category=6, seed=2)
    assert [c.category for c in case_list] == [c for c in CATEGORIES for _ in range(6)]
    for c in case_list:
        if c.category in ("two objects", "position", "colour attribution"):
            assert held_out_pair(*c.objects)
        if c.category == "counting":
            assert held_out_count(c.count, c.objects[0])
        if c.category == "object colour":
            assert held_out_colour(c.colours[0], c.objects[0])
    assert cases(6, 2)[10].prompt == case_list[10].prompt

    def reading(*found, background="white"):
        return SceneReading([Detection(n, x, y, 0.9, colour) for n, x, y, colour in found], background)

    left = Case("position", "a cat to the left of a dog", ["cat", "dog"], relation="to the left of")
    assert left.correct(reading(("cat", 10, 30, "orange"), ("dog", 50, 30, "brown")))
    assert not left.correct(reading(("cat", 50, 30, "orange"), ("dog", 10, 30, "brown")))
    assert not left.correct(reading(("cat", 10, 30, "orange")))
    count = Case("counting", "three cats", ["cat"], count=3)
    assert count.correct(reading(*[("cat", x, 10, "orange") for x in (5, 25, 45)]))
    assert not count.correct(reading(*[("cat", x, 10, "orange") for x in (5, 25)]))
    colours = Case("colour attribution", "a blue cat and a red dog", ["cat", "dog"], ["blue", "red"])
    assert colours.correct(reading(("cat", 5, 5, "blue"), ("dog", 40, 40, "red")))
    assert not colours.correct(reading(("cat", 5, 5, "red"), ("dog", 40, 40, "blue")))
    assert Case("background colour", "", ["cat"], background="pink").correct(reading(background="pink"))

    same = [Image.new("RGB", (64, 64), "white")] * 8
    moved = []
    for i in range(8):
        image = Image.new("RGB", (64, 64), "white")
        image.paste((200, 0, 0), (i * 7, i * 7, i * 7 + 16, i * 7 + 16))
        moved.append(image)
    assert diversity(same) == {"mean pairwise rmse": 0.0, "distinct": 1}
    assert diversity(moved)["distinct"] == 8


@needs_noto
def test_eval_compositional_cli_writes_the_table_grid_and_report(sd1, tmp_path, capsys):
    from sfumato.cli import main
    from sfumato.evaluation.scene_detector import save_detector, train_detector
    from sfumato.training.scenes import build_scene_dataset

    build_scene_dataset(tmp_path / "data", count=16, seed=2, styles=["noto"])
    detector = save_detector(train_detector(tmp_path / "data", steps=2, batch=4), tmp_path / "det.safetensors")
    out = tmp_path / "eval"
    assert main(["eval", "compositional", "--model", str(sd1), "--detector", str(detector), "--per-category", "1",
                 "--diversity-prompts", "1", "--steps", "1", "--safety", "off", "--out", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| single object |" in table and "| colour attribution |" in table and "distinct of 8 seeds" in table
    report = json.loads((out / "report.json").read_text())
    assert len(report["cases"]) == 7 and set(report["categories"]) >= {"overall", "counting", "position"}
    assert report["settings"]["steps"] == 1 and report["diversity"]["prompts"] == 1
    assert Image.open(out / "grid.png").size[0] >= 64 and (out / "diversity.png").exists()
    assert main(["eval", "compositional", "--detector", str(tmp_path / "none.safetensors"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
