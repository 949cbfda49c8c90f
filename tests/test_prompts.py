import pytest
import torch

from sfumato.errors import PromptSyntaxError
from sfumato.prompts import extract_lora_tags, parse_prompt_attention, split_flags
from sfumato.prompts.encode import tokenize_weighted
from sfumato.prompts.flags import size_for_aspect, stylize_to_cfg
from sfumato.models.singlefile import clip_tokenizer


# The examples of AUTOMATIC1111's parse_prompt_attention documentation.
A1111_CASES = [
    ("normal text", [("normal text", 1.0)]),
    ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
    ("(unbalanced", [("unbalanced", 1.1)]),
    ("\\(literal\\]", [("(literal]", 1.0)]),
    ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
    ("a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
     [("a ", 1.0), ("house", 1.573), (" ", 1.1), ("on", 1.0), (" a ", 1.1), ("hill", 0.55), (", sun, ", 1.1),
      ("sky", 1.4641), (".", 1.1)]),
    ("[dim]", [("dim", 1 / 1.1)]),
    ("((double))", [("double", 1.21)]),
    ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
]


@pytest.mark.parametrize("text,expected", A1111_CASES)
def test_parse_prompt_attention_matches_a1111_docs(text, expected):
    parsed = parse_prompt_attention(text)
    assert [t for t, _ in parsed] == [t for t, _ in expected]
    assert [w for _, w in parsed] == pytest.approx([w for _, w in expected], rel=1e-6)


def test_lora_tags_are_extracted():
    prompt, loras = extract_lora_tags("a cat <lora:style:0.8> on a mat <lora:other>")
    assert prompt == "a cat  on a mat"
    assert loras == [("style", 0.8), ("other", 1.0)]
    with pytest.raises(PromptSyntaxError):
        extract_lora_tags("<lora:x:abc>")


def test_midjourney_flags_map_to_fields():
    text, flags = split_flags("red apple, shiny --ar 16:9 --no blur, text --seed 7 --tile --chaos 40 --s 250 --q .5")
    assert text == "red apple, shiny"
    assert flags.aspect_ratio == (16, 9)
    assert flags.no == "blur, text"
    assert (flags.seed, flags.tile, flags.chaos, flags.stylize, flags.quality) == (7, True, 40, 250, 0.5)
    assert size_for_aspect((16, 9), 512) == (704, 384)
    assert size_for_aspect((1, 1), 1024) == (1024, 1024)
    assert stylize_to_cfg(100) == 9.5


@pytest.mark.parametrize("prompt", ["x --bogus 1", "x --ar 16x9", "x --chaos 101", "x --q 3", "x --tile yes",
                                    "x --seed", "x --ar 100:1"])
def test_bad_flags_raise(prompt):
    with pytest.raises(PromptSyntaxError):
        split_flags(prompt)


def test_prompt_without_flags_is_untouched():
    assert split_flags("a well-lit room -- with dashes")[0] == "a well-lit room -- with dashes"


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer("<|endoftext|>")


def test_tokenizer_ids_match_openai_clip(tokenizer):
    # Known ids of openai/clip-vit-large-patch14's tokenizer.
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_short_prompt_is_one_padded_chunk(tokenizer):
    chunks = tokenize_weighted(tokenizer, "a (cat:1.5)")
    assert len(chunks) == 1
    chunk = chunks[0]
    assert len(chunk.ids) == 77 and chunk.ids[:4] == [49406, 320, 2368, 49407]
    assert chunk.ids[4:] == [49407] * 73
    assert chunk.weights[:4] == [1.0, 1.0, 1.5, 1.0]


def test_long_prompt_and_break_make_chunks(tokenizer):
    long_prompt = " ".join(["cat"] * 100)
    chunks = tokenize_weighted(tokenizer, long_prompt)
    assert len(chunks) == 2
    assert chunks[0].ids.count(2368) == 75 and chunks[1].ids.count(2368) == 25
    broken = tokenize_weighted(tokenizer, "cat BREAK dog")
    assert len(broken) == 2 and broken[0].ids[1] == 2368 and broken[1].ids[1] == 1929


def test_comma_backtrack_moves_tail_to_next_chunk(tokenizer):
    prompt = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunks = tokenize_weighted(tokenizer, prompt)
    assert len(chunks) == 2
    assert 1929 not in chunks[0].ids  # no dog in the first chunk: it moved after the comma
    assert chunks[1].ids[1:11] == [1929] * 10


def test_sd2_pads_with_exclamation(tokenizer):
    sd2 = clip_tokenizer("!")
    chunk = tokenize_weighted(sd2, "cat")[0]
    assert chunk.ids[:3] == [49406, 2368, 49407] and chunk.ids[3:] == [0] * 74


# ---------------------------------------------------------------------- batched, cached encoding

MIXED = ["a red (apple:1.4), still life", "", "dog " * 90, "cat BREAK [hat]", "a red (apple:1.4), still life"]


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_prompts_encoded_together_equal_prompts_encoded_alone(family, sd1, sdxl):
    from sfumato.engine import _prompt_encoder
    from sfumato.models.loader import load_model

    loaded = load_model({"sd1": sd1, "sdxl": sdxl}[family], dtype="float32")
    together = _prompt_encoder(loaded).encode_many(MIXED, clip_skip=1)
    for prompt, (chunks, pooled) in zip(MIXED, together):
        alone_chunks, alone_pooled = _prompt_encoder(loaded).encode_many([prompt], clip_skip=1)[0]
        assert [c.shape for c in chunks] == [c.shape for c in alone_chunks]
        assert len(chunks) == (2 if prompt.startswith("dog") or "BREAK" in prompt else 1)
        for a, b in zip(chunks, alone_chunks):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        assert (pooled is None) == (family == "sd1")
        if pooled is not None:
            torch.testing.assert_close(pooled, alone_pooled, atol=1e-5, rtol=1e-5)


def test_encoded_prompts_are_cached_per_lora_state(sd1):
    from sfumato.engine import _prompt_encoder
    from sfumato.models.loader import load_model
    from sfumato.pipelines.guidance import build_guidance

    loaded = load_model(sd1, dtype="float32")
    encoder = _prompt_encoder(loaded)
    passes = []
    loaded.pipe.text_encoder.register_forward_hook(lambda module, args, out: passes.append(args[0].shape[0]))
    first = build_guidance(encoder, ["red apple", "blue car"], ["", ""], 7.0, clip_skip=1, steps=20)
    assert passes == [3]  # one pass: "red apple", "blue car", "" (the empty negative once)
    again = build_guidance(encoder, ["blue car", "red apple"], ["", ""], 7.0, clip_skip=1, steps=20)
    assert passes == [3]  # all cached
    assert torch.equal(again.encoded["red apple"].embeds, first.encoded["red apple"].embeds)
    encoder.state = (("some-lora", 0.8),)  # another LoRA set may change the text encoder: encode again
    build_guidance(encoder, ["red apple"], [""], 7.0, clip_skip=1, steps=20)
    assert passes == [3, 1, 1]  # a single pair: prompt and negative in separate passes, as diffusers does
    build_guidance(encoder, ["red apple"], [""], 7.0, clip_skip=1, steps=20)
    assert passes == [3, 1, 1]
    build_guidance(encoder, ["red apple"], [""], 7.0, clip_skip=2, steps=20)
    assert passes == [3, 1, 1, 1, 1]
