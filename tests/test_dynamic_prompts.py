"""Styles (A1111 styles.csv) and dynamic prompts (variants, wildcards): deterministic per seed, the same from the
CLI and the A1111 API, recorded resolved in the PNG with the template beside it, replayed bit-exactly."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

from sfumato.cli import main
from sfumato.errors import InvalidRequest, PromptSyntaxError
from sfumato.output import parse_infotext
from sfumato.prompts.dynamic import all_prompts, apply_styles, image_prompts, merge_style

FAST = ["--steps", "2", "-W", "32", "-H", "32", "--sampler", "Euler"]


@pytest.fixture
def home(tmp_path):
    root = tmp_path / "home"
    (root / "wildcards" / "art").mkdir(parents=True)
    (root / "styles.csv").write_text('name,prompt,negative_prompt\n'
                                     'cinematic,"cinematic still of {prompt}, film grain","cartoon"\n'
                                     'sharp,"highly detailed",blurry\n')
    (root / "wildcards" / "colors.txt").write_text("# colours\nred\ngreen\n\nblue\n")
    (root / "wildcards" / "art" / "animals.txt").write_text("{small|big} __colors__ cat\ndog\n")
    assert os.environ["SFUMATO_HOME"] == str(root)  # the autouse fixture's home
    return root


def test_styles_merge_like_a1111(home):
    assert merge_style("cinematic still of {prompt}, film grain", "a cat") == "cinematic still of a cat, film grain"
    assert merge_style("highly detailed", "a cat") == "a cat, highly detailed"
    assert merge_style("highly detailed", "") == "highly detailed"
    assert apply_styles("a cat", "", ["cinematic", "sharp"]) == (
        "cinematic still of a cat, film grain, highly detailed", "cartoon, blurry")
    with pytest.raises(InvalidRequest, match="unknown style 'nope'.*cinematic, sharp"):
        apply_styles("a cat", "", ["nope"])


def test_variants_and_wildcards_resolve_per_seed(home):
    template = "a {tiny|huge} __art/animals__"
    first = image_prompts(template, [1, 2, 3, 4, 5, 6])
    assert first == image_prompts(template, [1, 2, 3, 4, 5, 6])  # deterministic per seed
    assert len(set(first)) > 1 and all("{" not in p and "__" not in p for p in first)
    combos = all_prompts("{a|b} __colors__")
    assert combos == ["a red", "a green", "a blue", "b red", "b green", "b blue"]
    assert len(all_prompts(template)) == 2 * (2 * 3 + 1)
    with pytest.raises(PromptSyntaxError, match="__missing__ not found"):
        image_prompts("__missing__", [1])
    with pytest.raises(PromptSyntaxError, match="inside"):
        image_prompts("__../../etc/passwd__", [1])
    (home / "wildcards" / "loop.txt").write_text("__loop__\n")
    with pytest.raises(PromptSyntaxError, match="deeper"):
        image_prompts("__loop__", [1])


def test_cli_styles_and_wildcards_replay_bit_exact(home, sd1, tmp_path, capsys):
    code = main(["generate", "a {red|green|blue} apple", "--model", str(sd1), *FAST, "--seed", "3", "--batch-size",
                 "3", "--style", "sharp", "-o", str(tmp_path / "out.png"), "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    request = data["request"]
    assert request["template"] == "a {red|green|blue} apple" and request["styles"] == ["sharp"]
    assert request["negative_prompt"] == "blurry"
    expected = image_prompts("a {red|green|blue} apple, highly detailed", [3, 4, 5])
    assert request["image_prompts"] == expected
    for k, image in enumerate(data["images"]):
        params = parse_infotext(Image.open(image["path"]).text["parameters"])
        assert params["prompt"] == expected[k] and params["Negative prompt"] == "blurry"
        assert params["Template"] == "a {red|green|blue} apple" and params["Styles"] == "sharp"
    # replay needs neither the styles file nor the wildcards any more
    (home / "styles.csv").unlink()
    assert main(["replay", str(tmp_path / "out-2.png"), "-o", str(tmp_path / "again.png")]) == 0
    a, b = (np.asarray(Image.open(p)) for p in (tmp_path / "out-2.png", tmp_path / "again.png"))
    assert (a == b).all()


def test_combinatorial_makes_one_image_per_combination(home, sd1, capsys):
    code = main(["generate", "{a|b} __colors__", "--model", str(sd1), *FAST, "--combinatorial", "--dry-run"])
    assert code == 0
    resolved = json.loads(capsys.readouterr().out)
    assert resolved["image_prompts"] == ["a red", "a green", "a blue", "b red", "b green", "b blue"]
    assert resolved["batch_count"] == 6


def test_dry_run_shows_the_schedule(sd1, capsys):
    assert main(["generate", "a [cat:dog:0.5] :1 AND a bird :0.5", "--model", str(sd1), "--steps", "10",
                 "--dry-run"]) == 0
    schedule = json.loads(capsys.readouterr().out)["schedule"]
    parts = schedule["prompts"][0]["parts"]
    assert parts[0] == {"weight": 1.0, "first_pass": [[5, "a cat"], [10, "a dog"]]}
    assert parts[1]["weight"] == 0.5 and parts[1]["first_pass"] == [[10, " a bird"]]


def test_a1111_api_styles_and_prompt_styles(home, sd1, tmp_path):
    from fastapi.testclient import TestClient

    from sfumato.server.app import create_app
    from sfumato.server.settings import ServerSettings

    settings = ServerSettings(model=str(sd1), data_dir=tmp_path / "server", safety="off")
    with TestClient(create_app(settings), base_url="http://127.0.0.1:7860") as client:
        styles = client.get("/sdapi/v1/prompt-styles").json()
        assert [s["name"] for s in styles] == ["cinematic", "sharp"] and styles[1]["negative_prompt"] == "blurry"
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "a {red|blue} cat", "styles": ["cinematic"], "seed": 4,
                                                   "steps": 2, "width": 32, "height": 32, "batch_size": 2})
        assert r.status_code == 200, r.text
        info = json.loads(r.json()["info"])
        assert info["all_prompts"] == image_prompts("cinematic still of a {red|blue} cat, film grain", [4, 5])
        assert info["negative_prompt"] == "cartoon" and info["styles"] == ["cinematic"]
        r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "styles": ["nope"], "steps": 1})
        assert r.status_code == 422 and "unknown style" in r.json()["detail"]
        tokens = client.post("/api/v1/tokens", json={"prompt": "a [cat:big red dog:0.5]"}).json()
        assert tokens["chunks"] == [4] and [t["chunks"] for t in tokens["scheduled"]] == [[2], [4]]
