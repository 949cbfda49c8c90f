"""Prompt policy (normalisation, word boundaries, allow-list, audit log) and the image check, via engine and CLI."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from PIL import Image

from sfumato.cli import main
from sfumato.errors import ImageBlocked, PromptBlocked
from sfumato.requests import GenerationRequest
from sfumato.safety.classifier import SafetySettings, blur, nsfw_scores
from sfumato.safety.policy import PromptPolicy, normalise


@pytest.fixture
def weapons_policy(tmp_path):
    path = tmp_path / "policy.toml"
    path.write_text(f'''
[settings]
audit_log = "{tmp_path / 'audit.jsonl'}"
[allow]
phrases = ["water gun"]
[categories.weapons]
words = ["weapon", "gun", "ass"]
phrases = ["assault rifle"]
regex = ['\\bbomb\\w*']
''')
    return PromptPolicy.load(path)


def test_normalise_folds_case_accents_and_spacing():
    assert normalise("W E A P O N") == "weapon"
    assert normalise("wéapon, W.E.A.P.O.N!") == "weapon weapon"
    assert normalise("Ｗｅａｐｏｎ") == "weapon"  # full-width letters (NFKD)
    assert normalise("a red  apple") == "a red apple"
    assert normalise("a N.U.D.E statue") == "anude statue"
    assert normalise("a N.U.D.E statue", split_articles=True) == "a nude statue"


@pytest.mark.parametrize("prompt", ["a WEAPON on a table", "W E A P O N", "wéapon", "w-e-a-p-o-n", "two weapons",
                                    "an ASSAULT   rifle", "a bomber jacket", "G-U-N"])
def test_blocked_prompts_name_the_category_only(weapons_policy, prompt):
    with pytest.raises(PromptBlocked) as info:
        weapons_policy.check(prompt)
    assert str(info.value) == "prompt blocked by the safety policy (category: weapons)"


@pytest.mark.parametrize("prompt", ["a classic bass guitar", "Scunthorpe at dawn", "gunther",
                                    "a kid with a water gun", "an assassin's creed poster", "begun"])
def test_benign_prompts_pass_word_boundaries_and_allow_list(weapons_policy, prompt):
    weapons_policy.check(prompt)


def test_audit_log_has_time_category_and_hash_never_the_prompt(weapons_policy, tmp_path):
    with pytest.raises(PromptBlocked):
        weapons_policy.check("secret gun prompt")
    record = json.loads((tmp_path / "audit.jsonl").read_text().splitlines()[-1])
    assert record["category"] == "weapons" and record["decision"] == "block" and record["time"].endswith("Z")
    assert record["prompt_sha256"] == hashlib.sha256(b"secret gun prompt").hexdigest()
    assert "secret" not in (tmp_path / "audit.jsonl").read_text()


def test_default_policy():
    policy = PromptPolicy.load()
    assert policy.category_of("N U D E portrait") == "sexual_explicit"
    assert policy.category_of("nùde") == "sexual_explicit"
    assert policy.category_of("a naked child") == "sexual_minors"
    assert policy.category_of("a severed head, gore") == "gore"
    for benign in ("Scunthorpe town hall", "grilled chicken breast", "a child flying a kite", "Sussex coast",
                   "a gorilla", "nude lipstick", "red apple"):
        assert policy.category_of(benign) is None, benign


def test_bad_policy_files_give_one_line_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[categories.x]\nregex = ['(unclosed']\n")
    with pytest.raises(Exception, match="bad regex"):
        PromptPolicy.load(bad)
    with pytest.raises(Exception, match="does not exist"):
        PromptPolicy.load(tmp_path / "missing.toml")


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea", "rocket", "camera"])
def test_benign_photos_score_under_the_default_threshold(name):
    from skimage import data

    score = nsfw_scores([Image.fromarray(getattr(data, name)())])[0]
    assert 0.0 <= score < SafetySettings().threshold


def test_blur_is_strong_but_never_black():
    from skimage import data

    photo = Image.fromarray(data.astronaut()).resize((128, 128))
    blurred = blur(photo)
    assert blurred.size == photo.size and np.asarray(blurred).mean() > 40
    assert np.abs(np.asarray(blurred, dtype=float) - np.asarray(photo, dtype=float)).mean() > 20


@pytest.mark.slow
def test_engine_blur_and_block_paths(sd1):
    from sfumato.engine import Engine

    request = GenerationRequest("red apple", model=str(sd1), seed=3, steps=2, batch_size=2)
    plain = Engine(sd1).generate(request)
    assert all(i.nsfw_score is None and not i.nsfw for i in plain.images)
    flagged = Engine(sd1, safety=SafetySettings("blur", threshold=0.0)).generate(request)
    assert all(i.nsfw and 0 <= i.nsfw_score <= 1 for i in flagged.images) and len(flagged.images) == 2
    assert not np.array_equal(np.asarray(flagged.images[0].image), np.asarray(plain.images[0].image))
    passed = Engine(sd1, safety=SafetySettings("blur", threshold=1.0)).generate(request)
    assert [np.asarray(i.image).tolist() for i in passed.images] == [np.asarray(i.image).tolist() for i in plain.images]
    with pytest.raises(ImageBlocked, match="withheld"):
        Engine(sd1, safety=SafetySettings("block", threshold=0.0)).generate(request)
    with pytest.raises(PromptBlocked):
        Engine(sd1).generate(GenerationRequest("n u d e", model=str(sd1), steps=1))
    Engine(sd1).generate(GenerationRequest("red apple", negative_prompt="nsfw, nude", model=str(sd1), steps=1))


def test_cli_applies_policy_and_image_check(sd1, tmp_path, capsys):
    assert main(["generate", "a N.U.D.E statue", "--model", str(sd1), "--steps", "1", "-o", str(tmp_path)]) == 2
    assert "category: sexual_explicit" in capsys.readouterr().err
    out = tmp_path / "flagged.png"
    assert main(["generate", "red apple", "--model", str(sd1), "--steps", "1", "--safety-threshold", "0", "-o",
                 str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["images"][0]["nsfw"] is True
    with Image.open(out) as image:
        assert json.loads(image.text["sfumato"])["nsfw"] is True
    assert main(["generate", "red apple", "--model", str(sd1), "--steps", "1", "--safety", "block",
                 "--safety-threshold", "0", "-o", str(tmp_path / "x.png")]) == 2
    assert "withheld" in capsys.readouterr().err and not (tmp_path / "x.png").exists()
