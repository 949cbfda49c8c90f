"""Each layer of the denoiser (`pipelines.denoiser`) on its own, with a recording fake for what it wraps. The
composition is pinned against diffusers by the parity tests of test_engine (<= 1e-4 on latents)."""

from __future__ import annotations

import torch

from sfumato.pipelines import denoiser as layers
from sfumato.pipelines.guidance import Guidance, Part
from sfumato.prompts.encode import Conditioning


def _guidance(cfg=7.0, parts=((("a", 1.0),), (("b", 1.0),)), negatives=("", ""), schedules=None) -> Guidance:
    texts = {text for p in parts for text, _ in p} | set(negatives) | set(schedules or {})
    encoded = {text: Conditioning(torch.full((1, 2, 3), float(len(text) + ord(text[0]) if text else 0)), None)
               for text in texts}
    return Guidance([[Part(w, schedules.get(t, [(10, t)]) if schedules else [(10, t)]) for t, w in p] for p in parts],
                    [[(10, n)] for n in negatives], cfg, encoded)


class Recorder:
    def __init__(self, output=None):
        self.calls, self.output = [], output

    def __call__(self, model_input, t, step, kwargs):
        self.calls.append((model_input, t, step, dict(kwargs)))
        return model_input * 2 if self.output is None else self.output


class IdentityScheduler:
    def scale_model_input(self, x, t):
        return x + 0.5


def test_guided_gathers_each_images_rows_and_combines_them():
    guidance = _guidance(cfg=3.0)
    inner = Recorder()
    predict = layers.guided(inner, IdentityScheduler(), guidance, torch.device("cpu"))
    latents = torch.tensor([[1.0], [10.0]])
    out = predict(latents, torch.tensor(5), 0)
    rows = inner.calls[0][0]
    assert rows.tolist() == [[1.5], [10.5], [1.5], [10.5]]  # negatives first, then each image's part, scaled
    # all rows predict 2x their input: negative == positive, so CFG gives the same value back
    assert out.tolist() == [[3.0], [21.0]]
    unguided = layers.guided(Recorder(), IdentityScheduler(), _guidance(cfg=1.0), torch.device("cpu"))
    assert unguided(latents, torch.tensor(5), 0).tolist() == [[3.0], [21.0]]


def test_conditioned_builds_static_conditioning_once_and_scheduled_per_step():
    guidance = _guidance()
    inner = Recorder()
    calls = []
    original = guidance.at
    guidance.at = lambda step: calls.append(step) or original(step)

    class Unet:
        config = type("Config", (), {"class_embed_type": None})()

    call = layers.conditioned(inner, model=None, unet=Unet(), guidance=guidance, width=8, height=8)
    for step in range(3):
        call(torch.zeros(4, 1), torch.tensor(1), step, {})
    assert calls == [0]  # static prompts: built at the first step only
    kwargs = inner.calls[-1][3]
    assert set(kwargs) == {"encoder_hidden_states", "added_cond_kwargs", "class_labels", "timestep_cond"}
    assert kwargs["encoder_hidden_states"].shape == (4, 2, 3)
    scheduled = _guidance(parts=((("a", 1.0),),), negatives=("",), schedules={"a": [(1, "a"), (10, "bb")]})
    scheduled.encoded["bb"] = Conditioning(torch.full((1, 2, 3), 9.0), None)
    inner = Recorder()
    call = layers.conditioned(inner, None, Unet(), scheduled, 8, 8)
    for step in range(3):
        call(torch.zeros(2, 1), torch.tensor(1), step, {})
    firsts = [c[3]["encoder_hidden_states"][1, 0, 0].item() for c in inner.calls]
    assert firsts[0] == firsts[1] != firsts[2]  # prompt editing switches text after step 1


def test_controlled_adds_the_units_kwargs_and_nothing_without_units():
    inner = Recorder()
    assert layers.controlled(inner, None, 4, _guidance()) is inner

    class Units:
        def unet_kwargs(self, step, steps, model_input, t, context, added, class_labels, negative_rows, row_list):
            return {"down_block_additional_residuals": (step, steps, tuple(negative_rows), tuple(row_list))}

    call = layers.controlled(inner, Units(), 4, _guidance())
    call(torch.zeros(4, 1), torch.tensor(1), 2, {"encoder_hidden_states": 0, "added_cond_kwargs": None,
                                                   "class_labels": None})
    assert inner.calls[0][3]["down_block_additional_residuals"] == (2, 4, (True, True, False, False), (0, 1, 0, 1))


def test_inpaint_channels_and_hooks_see_the_input_in_order():
    inner = Recorder()
    seen = []

    class Hook:
        def before_call(self, *shape):
            seen.append(shape)

    concat = torch.ones(2, 5, 4, 4)
    call = layers.inpaint_channels(layers.hooked(inner, Hook(), Hook()), concat)
    call(torch.zeros(2, 4, 4, 4), torch.tensor(1), 0, {})
    assert inner.calls[0][0].shape == (2, 9, 4, 4)
    assert seen == [((2, 9, 4, 4),), (4, 4)]  # the cache sees the whole input shape, ToMe its height and width
    assert layers.hooked(inner) is inner and layers.inpaint_channels(inner, None) is inner


def test_blend_known_keeps_the_unmasked_region_at_the_next_noise_level():
    from sfumato.pipelines.steps import InpaintState

    class Scheduler:
        def add_noise(self, init, noise, t):
            return init + noise * t.float()

    mask = torch.tensor([[[[1.0, 0.0]]]])
    state = InpaintState(mask, torch.full((1, 1, 1, 2), 5.0), torch.ones(1, 1, 1, 2))
    timesteps = torch.tensor([3, 2, 1])
    step = layers.blend_known(lambda p, t, latents, i: latents * 0, Scheduler(), state, timesteps)
    assert step(None, None, torch.ones(1, 1, 1, 2), 0).tolist() == [[[[0.0, 7.0]]]]  # 5 + 1 * next t (2)
    assert step(None, None, torch.ones(1, 1, 1, 2), 2).tolist() == [[[[0.0, 5.0]]]]  # last step: the clean image
    plain = layers.sampler_step(type("S", (), {"step": lambda self, p, t, x, return_dict: (x - p,)})(), [], None, 1)
    assert layers.blend_known(plain, Scheduler(), None, timesteps) is plain


def test_sampler_step_passes_generators_and_eta_only_where_taken():
    got = {}

    class Ancestral:
        def step(self, prediction, t, latents, return_dict=False, generator=None, eta=None):
            got.update(generator=generator, eta=eta)
            return (latents - prediction,)

    generators = [torch.Generator(), torch.Generator()]
    step = layers.sampler_step(Ancestral(), generators, 0.3, images=2)
    assert step(torch.ones(2), None, torch.full((2,), 3.0), 0).tolist() == [2.0, 2.0]
    assert got == {"generator": generators, "eta": 0.3}
    layers.sampler_step(Ancestral(), generators, None, images=3)(torch.ones(3), None, torch.ones(3), 0)
    assert got == {"generator": None, "eta": None}  # one generator per image or none
