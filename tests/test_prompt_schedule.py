"""A1111 prompt editing, alternation and AND: schedules as A1111 builds them, and the images they must equal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sfumato.prompts.schedule import has_syntax, prompt_schedule, split_and, text_at
from sfumato.requests import GenerationRequest

# (prompt, steps, expected schedule). From A1111's prompt_parser doctests and Features page; consecutive repeats
# (A1111 lists [2,'male'],[3,'male'],[4,'male']) are merged into the last step they cover.
TABLE = [
    ("test", 10, [(10, "test")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 4, [(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)")]),
    ("[fe|]male", 4, [(1, "female"), (2, "male"), (3, "female"), (4, "male")]),
    ("[fe|||]male", 10, [(1, "female"), (4, "male"), (5, "female"), (8, "male"), (9, "female"), (10, "male")]),
    ("a [cat:dog:0.5] sitting", 20, [(10, "a cat sitting"), (20, "a dog sitting")]),
    ("a [cat:dog:0] sitting", 20, [(20, "a dog sitting")]),
    ("a [cat:dog:99] sitting", 20, [(20, "a cat sitting")]),
    ("[cat::0.5]", 4, [(2, "cat"), (4, "")]),
    ("a (red:1.2) [cat:(dog:1.3):0.5]", 10, [(5, "a (red:1.2) cat"), (10, "a (red:1.2) (dog:1.3)")]),
    (r"\[cat:dog:0.5\]", 4, [(4, r"\[cat:dog:0.5\]")]),  # escaped brackets are text
    ("a | b", 10, [(10, "a | b")]),  # does not parse in A1111 either: used verbatim
    ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75][ in foreground::0.6]"
     "[ in background:0.25] [shoddy:masterful:0.5]", 100, [
         (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
         (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
         (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
         (75, "fantasy landscape with a lake and an oak in background masterful"),
         (100, "fantasy landscape with a lake and a christmas tree in background masterful")]),
]


@pytest.mark.parametrize("prompt, steps, expected", TABLE, ids=[t[0][:40] for t in TABLE])
def test_a1111_schedules(prompt, steps, expected):
    assert prompt_schedule(prompt, steps) == expected


def test_hires_schedules_count_from_the_end_of_the_first_pass():
    assert prompt_schedule("a [b:.5] c", 10, hires_steps=10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:15] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]


def test_steps_use_the_first_entry_that_covers_them():
    schedule = prompt_schedule("[cat|dog]", 3)
    assert [text_at(schedule, i) for i in range(3)] == ["cat", "cat", "dog"]  # A1111: step i uses end_step >= i


def test_and_split_and_weights():
    assert split_and("a cat :1.2 AND a dog :0.8") == [("a cat", 1.2), (" a dog", 0.8)]
    assert split_and("a cat AND a dog") == [("a cat", 1.0), (" a dog", 1.0)]
    assert split_and("ANDROID") == [("ANDROID", 1.0)]
    assert has_syntax("a AND b") and has_syntax("[a|b]") and has_syntax("[a:b:3]") and not has_syntax("(a:1.2) [b]")


@pytest.fixture(scope="module")
def engine(sd1):
    from sfumato.engine import Engine

    return Engine(sd1)


def _image(engine, prompt, **kw):
    args = dict(seed=7, steps=4, width=32, height=32, sampler="Euler", cfg_scale=7.0)
    args.update(kw)
    return np.asarray(engine.generate(GenerationRequest(prompt, **args)).images[0].image, dtype=int)


def test_editing_equalities(engine):
    assert (_image(engine, "a [cat:dog:0] sitting") == _image(engine, "a dog sitting")).all()
    assert (_image(engine, "a [cat:dog:99] sitting") == _image(engine, "a cat sitting")).all()
    assert (_image(engine, "[cat|dog]", steps=1) == _image(engine, "cat", steps=1)).all()
    switched = _image(engine, "a [cat:dog:2] sitting")
    assert np.abs(switched - _image(engine, "a cat sitting")).max() > 0
    assert np.abs(switched - _image(engine, "a dog sitting")).max() > 0


def test_and_equalities(engine):
    alone = _image(engine, "a cat")
    assert np.abs(_image(engine, "a cat :1 AND a dog :0") - alone).max() <= 1
    both = _image(engine, "a cat AND a dog")
    assert np.abs(both - alone).max() > 1
    # with a negative prompt and a batch: every image still follows its own seed
    result = engine.generate(GenerationRequest("a cat :1 AND a dog :0", negative_prompt="blurry", seed=3, steps=3,
                                               width=32, height=32, sampler="Euler", batch_size=2))
    plain = engine.generate(GenerationRequest("a cat", negative_prompt="blurry", seed=3, steps=3, width=32, height=32,
                                              sampler="Euler", batch_size=2))
    for a, b in zip(result.images, plain.images):
        assert np.abs(np.asarray(a.image, dtype=int) - np.asarray(b.image, dtype=int)).max() <= 1


def test_hires_pass_gets_its_own_schedule(engine):
    """`[cat:dog:0.5]` is `dog` for the whole hires pass (fractions below 1.0 end within the first pass)."""
    kw = dict(hires_scale=2.0, hires_steps=2, hires_strength=0.5)
    edited = _image(engine, "a [cat:dog:0.5]", **kw)
    assert edited.shape == (64, 64, 3)
    first_cat = _image(engine, "a [cat:dog:0.5]", steps=4)
    assert (first_cat == _image(engine, "a [cat:dog:2]", steps=4)).all()


def test_generate_many_runs_scheduled_prompts_alone_and_correctly(engine):
    requests = [GenerationRequest(p, seed=5, steps=3, width=32, height=32, sampler="Euler")
                for p in ("a [cat:dog:0] x", "a dog x", "a cat AND a dog")]
    results = engine.generate_many(requests)
    first, second = (np.asarray(r.images[0].image, dtype=int) for r in results[:2])
    assert np.abs(first - second).max() <= 1


def test_grid_prompt_sr_over_an_edited_prompt(sd1, tmp_path, capsys):
    """Prompt S/R replaces inside the editing syntax; every cell is the image its own prompt gives alone."""
    from PIL import Image

    from sfumato.cli import main
    from sfumato.engine import Engine

    out = tmp_path / "grid.png"
    assert main(["grid", "a [cat:dog:2] x", "--model", str(sd1), "--x", "prompt_sr=cat,fox", "--seed", "3",
                 "--steps", "4", "--width", "32", "--height", "32", "--sampler", "Euler", "-o", str(out)]) == 0
    assert "2 cells, seed 3" in capsys.readouterr().out
    assert Image.open(out).width >= 64
    engine = Engine(sd1)
    fox = _image(engine, "a [fox:dog:2] x", seed=3)
    cat = _image(engine, "a [cat:dog:2] x", seed=3)
    assert np.abs(fox - cat).max() > 0


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_models_follow_edited_and_alternating_prompts(tmp_path, family):
    """SD3/FLUX: the pipeline gets each step's embeddings through its step callback; the equalities hold there too."""
    from sfumato.engine import Engine
    from sfumato.errors import UnsupportedModel
    from sfumato.models.tiny import build_tiny

    engine = Engine(build_tiny(family, tmp_path / family))
    kw = dict(steps=4, width=32, height=32, cfg_scale=None)

    def image(prompt, **extra):
        return np.asarray(engine.generate(GenerationRequest(prompt, seed=7, **{**kw, **extra})).images[0].image,
                          dtype=int)

    assert np.abs(image("a [cat:dog:0] x") - image("a dog x")).max() <= 1
    assert np.abs(image("a [cat:dog:99] x") - image("a cat x")).max() <= 1
    assert np.abs(image("[cat|dog]", steps=1) - image("cat", steps=1)).max() <= 1
    if family == "sd3":  # the tiny FLUX's text barely moves its images (cat vs dog: <= 4 levels); SD3's does
        switched = image("a [cat:dog:1] x")  # late steps of 4 barely move the tiny flow models: switch after 1
        assert np.abs(switched - image("a cat x")).max() > 1 and np.abs(switched - image("a dog x")).max() > 1
    # the step callback hands the pipeline the text of the step it starts (A1111: step i uses end_step >= i)
    from sfumato.pipelines.flow import ScheduledEmbeddings

    scheduled = ScheduledEmbeddings(engine.load().pipe, family == "flux", ["a [cat:dog:1] x"], [""], 4, True)
    cat, dog = scheduled._encode("a cat x")[0], scheduled._encode("a dog x")[0]
    assert torch.equal(scheduled.first_inputs()["prompt_embeds"], cat) and not torch.equal(cat, dog)
    assert torch.equal(scheduled.step_outputs(1)["prompt_embeds"][-1:], cat)
    assert torch.equal(scheduled.step_outputs(2)["prompt_embeds"][-1:], dog)
    with pytest.raises(UnsupportedModel, match="AND"):
        engine.generate(GenerationRequest("a cat AND a dog", seed=1, **kw))


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_flow_models_take_a1111_emphasis(tmp_path, family):
    """SD3/FLUX features with emphasis: without weights they equal the pipeline's own encode_prompt; a weight moves
    the emphasised tokens' features (and the image); `(word:1.0)` and escaped brackets are syntax, not text."""
    from sfumato.engine import Engine
    from sfumato.models.tiny import build_tiny
    from sfumato.prompts.flow_encode import flux_features, plain_text, sd3_features

    engine = Engine(build_tiny(family, tmp_path / family))
    pipe = engine.load().pipe
    if family == "sd3":
        ours = sd3_features(pipe, "a red apple")
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=["a red apple"], prompt_2=None, prompt_3=None,
                                                  device=pipe._execution_device, do_classifier_free_guidance=False)
    else:
        ours = flux_features(pipe, "a red apple")
        embeds, pooled, _ = pipe.encode_prompt(prompt=["a red apple"], prompt_2=None, device=pipe._execution_device)
    assert ours[0].shape == embeds.shape and ours[1].shape == pooled.shape
    assert (ours[0] - embeds).abs().max() <= 1e-4 and (ours[1] - pooled).abs().max() <= 1e-4  # parity bound
    weighted = (sd3_features if family == "sd3" else flux_features)(pipe, "a (red:1.6) apple")
    assert (weighted[0] - ours[0]).abs().max() > 1e-3
    assert plain_text("a (red:1.0) \\(apple\\)") == "a red (apple)"

    def image(prompt):
        request = GenerationRequest(prompt, seed=7, steps=4, width=32, height=32)
        return np.asarray(engine.generate(request).images[0].image, dtype=int)

    plain = image("a red apple")
    assert np.array_equal(image("a (red:1.0) apple"), plain)
    # the tiny models' images move little with one token's weight (measured on SD3: red x3 changes <= 1 level where
    # red -> blue changes 24), but the weight does reach the image
    assert not np.array_equal(image("a (red:3) apple"), plain)
