"""Engine behaviour on tiny random models: parity with diffusers, seeds, tasks, LoRA, pinned outputs."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.engine import Engine
from sfumato.errors import InvalidRequest, ModelNotFound, UnknownSampler
from sfumato.pipelines import tasks
from sfumato.requests import GenerationRequest
from sfumato.sampling.samplers import SAMPLERS

SIZE = 32


def req(**kw):
    base = dict(prompt="a red apple", seed=1234, steps=4, width=SIZE, height=SIZE, sampler="Euler")
    base.update(kw)
    return GenerationRequest(**base)


def pixels(result, i=0):
    return np.asarray(result.images[i].image).astype(np.int16)


def capture_latents(engine, request, monkeypatch):
    captured = {}
    original = tasks.decode_latents

    def spy(model, latents):
        captured["latents"] = latents.clone()
        return original(model, latents)

    monkeypatch.setattr(tasks, "decode_latents", spy)
    engine.generate(request)
    monkeypatch.setattr(tasks, "decode_latents", original)
    return captured["latents"]


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("sampler", ["Euler", "DPM++ 2M Karras", "Euler a"])
def test_parity_with_plain_diffusers(family, sampler, request, monkeypatch):
    """Same tiny model, prompt, seed, sampler and steps as a default diffusers pipeline -> same latents."""
    import diffusers

    from sfumato.sampling.samplers import make_scheduler

    path = request.getfixturevalue(family)
    engine = Engine(path)
    ours = capture_latents(engine, req(sampler=sampler, cfg_scale=7.0, negative_prompt="blurry"), monkeypatch)
    pipe = diffusers.DiffusionPipeline.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(sampler, dict(pipe.scheduler.config))
    theirs = pipe("a red apple", negative_prompt="blurry", num_inference_steps=4, guidance_scale=7.0, height=SIZE,
                  width=SIZE, generator=[torch.Generator().manual_seed(1234)], output_type="latent").images
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_pinned_output_slice(engine_sd1):
    """A known seed gives a known slice: any change to noise, prompt encoding or sampling shows up here."""
    result = engine_sd1.generate(req(sampler="DPM++ 2M Karras", cfg_scale=7.5))
    image = pixels(result)
    assert image.shape == (SIZE, SIZE, 3)
    expected = [191, 190, 146, 154, 123, 129, 126, 118, 103]
    assert np.abs(image[12:15, 12:15, 0].flatten() - np.array(expected)).max() <= 2


def test_batch_image_i_uses_seed_plus_i(engine_sd1):
    batch = engine_sd1.generate(req(batch_size=3, batch_count=2))
    assert [item.seed for item in batch.images] == [1234 + i for i in range(6)]
    alone = engine_sd1.generate(req(seed=1236))
    assert np.abs(pixels(batch, 2) - pixels(alone)).max() <= 1
    assert np.abs(pixels(batch, 0) - pixels(batch, 1)).max() > 5


def test_variation_seed_strength(engine_sd1):
    base = pixels(engine_sd1.generate(req(subseed=99, subseed_strength=0.0)))
    plain = pixels(engine_sd1.generate(req()))
    assert (base == plain).all()
    varied = pixels(engine_sd1.generate(req(subseed=99, subseed_strength=0.3)))
    full = pixels(engine_sd1.generate(req(subseed=99, subseed_strength=1.0)))
    other_seed = pixels(engine_sd1.generate(req(seed=99)))
    assert np.abs(varied - base).max() > 0
    assert np.abs(full - other_seed).max() <= 1


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_every_sampler_runs_and_is_deterministic(engine_sd1, sampler):
    first = engine_sd1.generate(req(sampler=sampler, steps=3))
    second = engine_sd1.generate(req(sampler=sampler, steps=3))
    assert (pixels(first) == pixels(second)).all()
    assert first.request.sampler == sampler


def test_switching_sampler_keeps_model_loaded(engine_sd1):
    engine_sd1.generate(req(sampler="Euler"))
    loaded = engine_sd1._loaded
    engine_sd1.generate(req(sampler="DDIM"))
    assert engine_sd1._loaded is loaded


def test_unknown_sampler(engine_sd1):
    with pytest.raises(UnknownSampler):
        engine_sd1.generate(req(sampler="Fancy"))


def test_emphasis_and_clip_skip_change_the_image(engine_sd1):
    plain = pixels(engine_sd1.generate(req(prompt="a red apple")))
    weighted = pixels(engine_sd1.generate(req(prompt="a (red:1.6) apple")))
    skipped = pixels(engine_sd1.generate(req(prompt="a red apple", clip_skip=2)))
    assert np.abs(plain - weighted).max() > 0
    assert np.abs(plain - skipped).max() > 0


def test_long_prompt_generates(engine_sd1):
    result = engine_sd1.generate(req(prompt=", ".join(["red apple"] * 60), negative_prompt="x"))
    assert result.images[0].image.size == (SIZE, SIZE)


def test_img2img_strength(engine_sd1, tmp_path, monkeypatch):
    init = Image.fromarray(np.tile(np.linspace(0, 255, SIZE, dtype=np.uint8)[None, :, None], (SIZE, 1, 3)))
    init.save(tmp_path / "init.png")
    # strength 0 runs no step: the latents are the init image's; more strength moves further from them
    def latents(strength):
        request = req(init_image=str(tmp_path / "init.png"), strength=strength, steps=10, cfg_scale=1.0)
        return capture_latents(engine_sd1, request, monkeypatch)

    reference, low, high = latents(0.0), latents(0.3), latents(0.9)
    assert 0 < (low - reference).abs().mean() < (high - reference).abs().mean()
    assert engine_sd1.generate(req(init_image=str(tmp_path / "init.png"))).request.width == SIZE


def _square_mask(path, size=SIZE):
    mask = np.zeros((size, size), np.uint8)
    mask[8:24, 8:24] = 255
    Image.fromarray(mask).save(path)


@pytest.mark.parametrize("model", ["sd1", "sd1_inpaint"])
def test_inpaint_keeps_unmasked_pixels(model, request, tmp_path):
    engine = Engine(request.getfixturevalue(model))
    init = Image.fromarray(np.full((SIZE, SIZE, 3), 200, np.uint8))
    init.save(tmp_path / "init.png")
    _square_mask(tmp_path / "mask.png")
    result = engine.generate(req(init_image=str(tmp_path / "init.png"), mask=str(tmp_path / "mask.png"),
                                 mask_blur=0, strength=1.0))
    image = pixels(result)
    assert (image[:4, :, :] == 200).all()  # far outside the mask: original pixels
    assert np.abs(image[12:20, 12:20] - 200).max() > 10  # inside: repainted


def test_outpaint_grows_canvas(engine_sd1, tmp_path):
    Image.fromarray(np.full((SIZE, SIZE, 3), 90, np.uint8)).save(tmp_path / "init.png")
    result = engine_sd1.generate(req(init_image=str(tmp_path / "init.png"), outpaint={"left": 16, "down": 8},
                                     mask_blur=0))
    assert result.images[0].image.size == (SIZE + 16, SIZE + 8)
    assert (pixels(result)[:SIZE - 4, 20:SIZE + 16] == 90).all()  # the original area is kept


@pytest.mark.parametrize("upscaler", ["latent", "lanczos"])
def test_hires_fix_doubles_size(engine_sd1, upscaler):
    result = engine_sd1.generate(req(hires_scale=2.0, hires_strength=0.5, hires_upscaler=upscaler))
    assert result.images[0].image.size == (2 * SIZE, 2 * SIZE)
    assert "Hires upscale: 2" in result.images[0].infotext


def test_tile_changes_output_only_for_that_request(engine_sd1):
    plain = pixels(engine_sd1.generate(req()))
    tiled = pixels(engine_sd1.generate(req(tile=True)))
    again = pixels(engine_sd1.generate(req()))
    assert np.abs(plain - tiled).max() > 0
    assert (plain == again).all()
    convs = [m for m in engine_sd1._loaded.pipe.unet.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(conv.padding_mode == "zeros" for conv in convs)


def test_tiling_makes_unet_and_vae_wrap_around(engine_sd1):
    """With circular padding the networks commute with circular shifts: the image tiles seamlessly."""
    from sfumato.pipelines.steps import seamless_tiling

    model = engine_sd1.load()
    unet, vae = model.pipe.unet, model.pipe.vae
    torch.manual_seed(0)
    x = torch.randn(1, 4, 16, 16)
    context = torch.randn(1, 77, 32)

    def shift_error(tile):
        with torch.no_grad(), seamless_tiling(model, tile):
            out = unet(x, 500, encoder_hidden_states=context).sample
            shifted = unet(x.roll(4, dims=3), 500, encoder_hidden_states=context).sample
            image = vae.decode(x).sample
            image_shifted = vae.decode(x.roll(4, dims=3)).sample
        return ((shifted - out.roll(4, dims=3)).abs().max().item(),
                (image_shifted - image.roll(8, dims=3)).abs().max().item())

    assert max(shift_error(True)) < 1e-4
    assert min(shift_error(False)) > 1e-3


def test_single_file_generates_like_folder(sd1, sd1_single):
    folder = pixels(Engine(sd1).generate(req()))
    single = pixels(Engine(sd1_single).generate(req()))
    assert (folder == single).all()


def test_midjourney_flags_resolve(engine_sd1):
    resolved = engine_sd1.resolve(req(prompt="apple --ar 2:1 --no pear --seed 5 --q .5 --tile", width=None,
                                      height=None, negative_prompt="ugly"))
    assert (resolved.width, resolved.height) == (88, 48)  # native 64 px area, 8 px steps for a tiny model
    assert resolved.negative_prompt == "ugly, pear"
    assert (resolved.seed, resolved.steps, resolved.tile, resolved.prompt) == (5, 2, True, "apple")


def test_missing_inputs_fail_cleanly(engine_sd1, monkeypatch):
    with pytest.raises(ModelNotFound):
        engine_sd1.generate(req(init_image="/nonexistent.png"))
    with pytest.raises(ModelNotFound):
        engine_sd1.generate(req(model="/nonexistent-model"))
    monkeypatch.setattr("sfumato.models.embedded.embedded_model", lambda: None)  # an install without it
    with pytest.raises(InvalidRequest, match="no model given"):
        Engine().generate(req())


def test_prediction_type_override(engine_sd1):
    base = GenerationRequest("a cat", seed=3, steps=3, sampler="Euler", width=32, height=32)
    eps = np.asarray(engine_sd1.generate(base).images[0].image, dtype=np.float32)
    vpred = engine_sd1.generate(dataclasses.replace(base, prediction_type="v_prediction"))
    assert vpred.request.prediction_type == "v_prediction"
    assert np.abs(np.asarray(vpred.images[0].image, dtype=np.float32) - eps).max() > 1
    with pytest.raises(InvalidRequest, match="prediction_type"):
        engine_sd1.generate(dataclasses.replace(base, prediction_type="flow"))


def test_fp16_sdxl_vae_is_upcast_for_decoding(sdxl, monkeypatch):
    """SDXL's VAE config says force_upcast: an fp16 model decodes in fp32 and goes back to fp16."""
    engine = Engine(sdxl, dtype="float16")
    model = engine.load()
    seen = []
    original = model.pipe.vae.decode
    monkeypatch.setattr(model.pipe.vae, "decode", lambda *a, **k: (seen.append(model.pipe.vae.dtype), original(*a, **k))[1])
    image = np.asarray(engine.generate(req(sampler="Euler")).images[0].image)
    assert model.pipe.vae.config.force_upcast and seen == [torch.float32]
    assert model.pipe.vae.dtype == torch.float16 and model.pipe.unet.dtype == torch.float16
    assert image.std() > 0


def test_generate_many_batches_compatible_requests_like_running_alone(engine_sd1):
    """Requests that differ only in prompt, negative prompt, seed and cfg_scale share one batch; each image
    equals its request run alone (≤ 1/255), so the server's dynamic batching changes no pixel."""
    from unittest import mock

    import numpy as np

    from sfumato.pipelines import tasks
    from sfumato.requests import GenerationRequest

    requests = [GenerationRequest("red apple", seed=1, steps=3, cfg_scale=5.0),
                GenerationRequest("blue car", negative_prompt="ugly", seed=7, steps=3, cfg_scale=9.0, batch_size=2),
                GenerationRequest("red apple", seed=1, steps=3, cfg_scale=1.0),  # unguided: runs on its own
                GenerationRequest("red apple", seed=2, steps=4, cfg_scale=5.0)]  # other steps: on its own
    with mock.patch.object(tasks, "denoise", wraps=tasks.denoise) as denoise:
        together = engine_sd1.generate_many(requests)
    assert [c.args[2].shape[0] for c in denoise.call_args_list] == [3, 1, 1]  # rows per denoise call
    for request, result in zip(requests, together):
        alone = engine_sd1.generate(request)
        assert [i.seed for i in result.images] == [i.seed for i in alone.images]
        for a, b in zip(result.images, alone.images):
            assert np.abs(np.asarray(a.image, dtype=int) - np.asarray(b.image, dtype=int)).max() <= 1
            assert a.infotext == b.infotext


def test_a_stop_asked_mid_step_takes_effect_at_the_next_block(engine_sd1):
    """`Engine.should_stop` is asked before every UNet/VAE block: a stop raises `Interrupted` inside the first step,
    before it completes; the hooks are gone afterwards and the next generation is the plain one."""
    from sfumato.engine import Interrupted

    request = GenerationRequest(prompt="a red apple", seed=5, steps=3, width=32, height=32, sampler="Euler")
    plain = np.asarray(engine_sd1.generate(request).images[0].image)
    asked, steps = [], []

    def should_stop() -> bool:
        asked.append(1)
        return len(asked) >= 3  # the third block of the first UNet call

    engine_sd1.should_stop = should_stop
    try:
        with pytest.raises(Interrupted):
            engine_sd1.generate(request, progress=lambda done, total: steps.append(done))
    finally:
        engine_sd1.should_stop = None
    assert len(asked) == 3 and not [s for s in steps if s > 0]  # no step finished
    unet = engine_sd1._loaded.pipe.unet
    assert not any(block._forward_pre_hooks for block in [*unet.down_blocks, unet.mid_block, *unet.up_blocks])
    assert np.array_equal(np.asarray(engine_sd1.generate(request).images[0].image), plain)
