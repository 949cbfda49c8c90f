"""Property-based fuzzing (Hypothesis) of every parser that reads user text: whatever comes in, the only exceptions
are our own user-facing errors, and what can round-trip does."""

from __future__ import annotations

import io
import json

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, PngImagePlugin

from sfumato.errors import InvalidRequest, PromptSyntaxError, SfumatoError
from sfumato.output import infotext, parse_infotext, read_png
from sfumato.prompts.attention import parse_prompt_attention
from sfumato.prompts.flags import split_flags
from sfumato.prompts.lora_tags import extract_lora_tags
from sfumato.requests import GenerationRequest

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SYNTAX = st.sampled_from(list("()[]{}|:\\<>_,.- ") + ["BREAK", "AND", "--ar ", "--no ", "<lora:", "__", "0.5",
                                                       ":1.2)", "\n", "é", "🍎", "\x00"])
PROMPTS = st.lists(st.one_of(SYNTAX, st.text(max_size=6)), max_size=25).map("".join)


@FUZZ
@given(PROMPTS)
def test_emphasis_parser_never_raises(text):
    parsed = parse_prompt_attention(text)
    assert parsed and all(isinstance(t, str) and isinstance(w, float) for t, w in parsed)


@FUZZ
@given(PROMPTS)
def test_flags_raise_only_prompt_syntax_errors(text):
    try:
        rest, flags = split_flags(text)
    except PromptSyntaxError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert isinstance(rest, str)


@FUZZ
@given(PROMPTS)
def test_lora_tags_raise_only_prompt_syntax_errors(text):
    try:
        rest, loras = extract_lora_tags(text)
    except PromptSyntaxError:
        return
    assert all(isinstance(n, str) and n and isinstance(w, float) for n, w in loras)
    assert extract_lora_tags(rest)[1] == []  # nothing tag-like is left behind


@pytest.fixture(scope="module")
def clip_tokenizer():
    from sfumato.models.singlefile import clip_tokenizer

    return clip_tokenizer("<|endoftext|>")


@FUZZ
@given(text=PROMPTS)
def test_tokenizer_chunks_are_whole(clip_tokenizer, text):
    from sfumato.prompts.encode import tokenize_weighted

    for chunk in tokenize_weighted(clip_tokenizer, text):
        assert len(chunk.ids) == 77 and len(chunk.weights) == 77 and 0 <= chunk.tokens <= 75


LINE = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=40)


@FUZZ
@given(prompt=LINE, negative=LINE, steps=st.integers(1, 150), seed=st.integers(0, 2**32 - 1),
       cfg=st.floats(0, 30, allow_nan=False), side=st.sampled_from([64, 512, 1024]))
def test_infotext_round_trip(prompt, negative, steps, seed, cfg, side):
    assume(not prompt.startswith("Negative prompt:") and prompt.strip() == prompt and negative.strip() == negative)
    request = GenerationRequest(prompt, negative, sampler="Euler a", steps=steps, cfg_scale=cfg, seed=seed,
                                width=side, height=side)
    parsed = parse_infotext(infotext(request, seed, 0, "model", "0123456789"))
    assert parsed["prompt"] == prompt and parsed["Negative prompt"] == negative
    assert (parsed["Steps"], parsed["Seed"], parsed["Size"]) == (str(steps), str(seed), f"{side}x{side}")
    assert float(parsed["CFG scale"]) == pytest.approx(cfg, rel=1e-5, abs=1e-5)


@FUZZ
@given(st.text(max_size=300))
def test_infotext_parser_reads_anything(text):
    parsed = parse_infotext(text)
    assert isinstance(parsed["prompt"], str)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats() | st.text(max_size=10),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
                    max_leaves=8)
FIELDS = ["prompt", "negative_prompt", "steps", "cfg_scale", "seed", "width", "height", "batch_size", "loras",
          "outpaint", "tile", "sampler", "hires_scale", "strength", "init_image", "mask", "subseed_strength", "model"]


@FUZZ
@given(st.dictionaries(st.sampled_from(FIELDS + ["bogus"]), JSON, max_size=8))
def test_request_validation_raises_only_invalid_request(data):
    try:
        GenerationRequest.from_dict(data).validate()
    except InvalidRequest as exc:
        assert str(exc)


@FUZZ
@given(st.dictionaries(st.sampled_from(["parameters", "sfumato", "Comment", "prompt"]),
                       st.one_of(st.text(max_size=80), JSON.map(json.dumps)), max_size=3))
def test_png_info_reading_raises_only_our_errors(tmp_path_factory, chunks):
    path = tmp_path_factory.mktemp("png") / "x.png"
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        info.add_text(key, value)
    Image.new("RGB", (4, 4)).save(path, pnginfo=info)
    try:
        record = read_png(path)
    except SfumatoError:
        return
    assert isinstance(record.request, GenerationRequest)


@FUZZ
@given(st.binary(max_size=200))
def test_png_reading_of_arbitrary_bytes(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("bytes") / "x.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + data)
    with pytest.raises(SfumatoError):
        read_png(path)


@FUZZ
@given(sizes=st.lists(st.tuples(st.integers(1, 5000), st.integers(1, 5000)), min_size=1, max_size=40),
       resolution=st.sampled_from([64, 256, 512, 1024]), batch=st.integers(1, 8), seed=st.integers(0, 10))
def test_bucketing_places_every_image_once(sizes, resolution, batch, seed):
    from sfumato.training.buckets import epoch_batches, make_buckets, plan_buckets

    buckets = make_buckets(resolution, resolution // 2, 64 if resolution >= 256 else 8)
    plan = plan_buckets(sizes, buckets, batch, seed=seed)
    kept = [i for i, size in enumerate(plan.sizes) if size is not None]
    assert len(kept) + plan.dropped == len(sizes)
    seen = sorted(i for b in epoch_batches(plan, batch, seed, 0) for i in b)
    assert set(seen) <= set(kept)


TOML_VALUE = st.one_of(st.integers(-10, 10**6), st.floats(-1e3, 1e3, allow_nan=False), st.booleans(),
                       st.text(max_size=8), st.lists(st.text(max_size=4), max_size=2), st.lists(st.integers(), max_size=2))


@FUZZ
@given(st.dictionaries(st.sampled_from(["steps", "batch_size", "learning_rate", "resolution", "model", "flip",
                                        "validation_prompts", "caption_dropout", "mixed-precision", "rank", "nonsense",
                                        "ema_decay", "seed", "bucket_min"]), TOML_VALUE, max_size=6))
def test_toml_configs_raise_only_invalid_request(tmp_path_factory, values):
    from sfumato.training.config import TrainConfig, load_toml

    path = tmp_path_factory.mktemp("toml") / "c.toml"
    path.write_text("".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items()))
    try:
        loaded = load_toml(path)
        TrainConfig(method="lora", data="d", output="o", **{"model": "m", **loaded}).validate()
    except InvalidRequest as exc:
        assert str(exc)


def test_png_with_truncated_body_is_refused(tmp_path):
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16)).save(buffer, format="PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[:40])
    with pytest.raises(SfumatoError):
        read_png(path)
