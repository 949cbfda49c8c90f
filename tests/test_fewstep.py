"""Few-step generation: LCM (w-conditioned UNets and LCM-LoRA), TCD, trailing timesteps for Turbo/Lightning/Hyper,
presets and how models and LoRAs declare them — with parity against plain diffusers on tiny models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sfumato.engine import Engine
from sfumato.errors import InvalidRequest
from sfumato.requests import GenerationRequest
from test_engine import SIZE, capture_latents
from test_models import lora_files  # noqa: F401,F811 (a fixture)

PROMPT = "a red apple"


def req(**kw) -> GenerationRequest:
    base = dict(prompt=PROMPT, seed=1234, width=SIZE, height=SIZE)
    base.update(kw)
    return GenerationRequest(**base)


def _pipe(cls, path, scheduler):
    pipe = cls.from_pretrained(str(path), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = scheduler.from_config(pipe.scheduler.config) if isinstance(scheduler, type) else scheduler
    return pipe


@pytest.fixture(scope="module")
def lcm_model(sd1, tmp_path_factory):
    """The tiny SD1 model with a w-conditioned UNet (`time_cond_proj_dim`), as LCM-distilled full models have."""
    from diffusers import UNet2DConditionModel

    path = tmp_path_factory.mktemp("lcm") / "sd1-lcm"
    shutil.copytree(sd1, path)
    config = dict(UNet2DConditionModel.load_config(str(sd1 / "unet")))
    config["time_cond_proj_dim"] = 32
    torch.manual_seed(3)
    UNet2DConditionModel.from_config(config).save_pretrained(str(path / "unet"))
    return path


def test_lcm_model_parity_with_diffusers(lcm_model, monkeypatch):
    """A w-conditioned UNet: the guidance scale is embedded, no CFG pass (diffusers' LatentConsistencyModelPipeline)."""
    from diffusers import LatentConsistencyModelPipeline, LCMScheduler

    ours = capture_latents(Engine(lcm_model), req(sampler="LCM", steps=4, cfg_scale=8.0), monkeypatch)
    pipe = _pipe(LatentConsistencyModelPipeline, lcm_model, LCMScheduler)
    theirs = pipe(PROMPT, num_inference_steps=4, guidance_scale=8.0, height=SIZE, width=SIZE,
                  generator=[torch.Generator().manual_seed(1234)], output_type="latent").images
    assert (ours - theirs).abs().max().item() <= 1e-4
    other = capture_latents(Engine(lcm_model), req(sampler="LCM", steps=4, cfg_scale=2.0), monkeypatch)
    assert (other - ours).abs().max().item() > 1e-3  # the scale reaches the UNet


@pytest.mark.parametrize("which", [0, 1], ids=["diffusers", "kohya"])
def test_lcm_lora_parity_with_diffusers(sd1, lora_files, which, monkeypatch):  # noqa: F811
    """LCM-LoRA: a LoRA + the LCM sampler, CFG 1 (one UNet pass per step), both LoRA layouts."""
    import diffusers

    lora = lora_files[which]
    ours = capture_latents(Engine(sd1), req(sampler="LCM", steps=4, cfg_scale=1.0, loras=[(str(lora), 1.0)]),
                           monkeypatch)
    pipe = _pipe(diffusers.StableDiffusionPipeline, sd1, diffusers.LCMScheduler)
    pipe.load_lora_weights(str(lora))
    theirs = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, height=SIZE, width=SIZE,
                  generator=[torch.Generator().manual_seed(1234)], output_type="latent").images
    assert (ours - theirs).abs().max().item() <= 1e-4


def test_tcd_parity_with_diffusers_and_gamma(sd1, monkeypatch):
    import diffusers

    ours = capture_latents(Engine(sd1), req(sampler="TCD", steps=4, cfg_scale=1.0, eta=0.3), monkeypatch)
    pipe = _pipe(diffusers.StableDiffusionPipeline, sd1, diffusers.TCDScheduler)
    theirs = pipe(PROMPT, num_inference_steps=4, guidance_scale=1.0, eta=0.3, height=SIZE, width=SIZE,
                  generator=[torch.Generator().manual_seed(1234)], output_type="latent").images
    assert (ours - theirs).abs().max().item() <= 1e-4
    other = capture_latents(Engine(sd1), req(sampler="TCD", steps=4, cfg_scale=1.0, eta=0.8), monkeypatch)
    assert (other - ours).abs().max().item() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("sampler,steps", [("Euler a", 1), ("Euler", 4)], ids=["turbo", "lightning"])
def test_trailing_spacing_parity_sdxl(sdxl, sampler, steps, monkeypatch):
    """SDXL-Turbo (1 step, Euler a) and SDXL-Lightning (Euler) settings: trailing timesteps and no CFG."""
    import diffusers

    from sfumato.sampling.samplers import make_scheduler

    ours = capture_latents(Engine(sdxl), req(sampler=sampler, steps=steps, cfg_scale=1.0,
                                             timestep_spacing="trailing"), monkeypatch)
    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(str(sdxl), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(sampler, {**dict(pipe.scheduler.config), "timestep_spacing": "trailing"})
    theirs = pipe(PROMPT, num_inference_steps=steps, guidance_scale=0.0, height=SIZE, width=SIZE,
                  generator=[torch.Generator().manual_seed(1234)], output_type="latent").images
    assert (ours - theirs).abs().max().item() <= 1e-4
    leading = capture_latents(Engine(sdxl), req(sampler=sampler, steps=steps, cfg_scale=1.0,
                                                timestep_spacing="leading"), monkeypatch)
    assert (leading - ours).abs().max().item() > 1e-3


def test_presets_fill_only_what_the_request_leaves_open(sd1):
    engine = Engine(sd1)
    turbo = engine.resolve(req(preset="turbo"))
    assert (turbo.sampler, turbo.steps, turbo.cfg_scale, turbo.timestep_spacing) == ("Euler a", 1, 1.0, "trailing")
    mine = engine.resolve(req(preset="lightning", steps=8, cfg_scale=1.5))
    assert (mine.sampler, mine.steps, mine.cfg_scale, mine.timestep_spacing) == ("Euler", 8, 1.5, "trailing")
    tcd = engine.resolve(req(preset="tcd"))
    assert (tcd.sampler, tcd.eta) == ("TCD", 0.3)
    result = engine.generate(req(preset="lcm"))
    assert "Sampler: LCM" in result.images[0].infotext and "Preset: lcm" in result.images[0].infotext
    assert "CFG scale: 1," in result.images[0].infotext
    with pytest.raises(InvalidRequest, match="unknown preset"):
        engine.resolve(req(preset="ludicrous"))
    with pytest.raises(InvalidRequest, match="timestep_spacing"):
        req(timestep_spacing="sideways").validate()


def test_models_and_loras_declare_their_preset(sd1, lora_files, tmp_path, monkeypatch):  # noqa: F811
    model = tmp_path / "turbo-model"
    shutil.copytree(sd1, model)
    (model / "sfumato.json").write_text(json.dumps({"preset": "turbo", "steps": 2}))
    declared = Engine(model).resolve(req())
    assert (declared.sampler, declared.steps, declared.cfg_scale, declared.timestep_spacing) == \
        ("Euler a", 2, 1.0, "trailing")
    named = tmp_path / "lcm-lora-sdv1-5.safetensors"
    shutil.copy(lora_files[1], named)
    with_lora = Engine(sd1).resolve(req(loras=[(str(named), 1.0)]))
    assert (with_lora.sampler, with_lora.steps, with_lora.cfg_scale, with_lora.preset) == ("LCM", 4, 1.0, "lcm")
    plain = Engine(sd1).resolve(req(loras=[(str(lora_files[1]), 1.0)]))
    assert plain.preset is None and plain.sampler != "LCM"
    from sfumato.sampling.presets import lora_preset

    for name, expected in (("sdxl_lightning_4step_lora", "lightning"), ("Hyper-SD15-8steps-lora", "hyper"),
                           ("TCD-SD15-LoRA", "tcd"), ("lcm_lora_sdxl", "lcm"), ("turbo-anime-style", None),
                           ("blcm-lorax", None)):
        copy = tmp_path / f"{name}.safetensors"
        shutil.copy(lora_files[1], copy)
        assert lora_preset(copy) == expected, name
    replayed = Engine(sd1).resolve(with_lora)  # a resolved request resolves to itself
    assert (replayed.sampler, replayed.steps, replayed.cfg_scale) == ("LCM", 4, 1.0)


# ----------------------------------------------------------------------------- sfumato train lcm

def _teacher_distance(engine, prompts, **kw) -> float:
    """RMSE (0..255) of 2-step LCM images to the teacher's 30-step Euler images at CFG 7.5, same seeds."""
    import numpy as np

    def images(e, **settings):
        return np.stack([np.asarray(e.generate(req(prompt=p, seed=s, **settings)).images[0].image, np.float32)
                         for p in prompts for s in range(3)])

    teacher = images(Engine(engine.default_model), sampler="Euler", steps=30, cfg_scale=7.5)
    student = images(engine, sampler="LCM", steps=2, cfg_scale=1.0, **kw)
    return float(np.sqrt(((student - teacher) ** 2).mean()))


@pytest.mark.slow
def test_train_lcm_lora_distils_and_loads_in_diffusers(sd1, tmp_path, monkeypatch):
    """An LCM-LoRA of the tiny model: its 2-step images move towards the teacher's guided 30-step ones; the file
    says it is an LCM-LoRA (so --lora picks the LCM settings) and gives the same latents in plain diffusers."""
    import diffusers
    import numpy as np

    from sfumato.sampling.presets import lora_preset
    from sfumato.training.config import TrainConfig
    from sfumato.training.trainer import train
    from test_training import _write_images

    data = tmp_path / "data"
    data.mkdir()
    _write_images(data, 6)
    config = TrainConfig(method="lcm", data=str(data), output=str(tmp_path / "run"), model=str(sd1), steps=120,
                         batch_size=2, resolution=32, learning_rate=2e-3, checkpoint_every=60, caption_dropout=0.0,
                         cache_dir=str(tmp_path / "cache"), seed=0, rank=4, lcm_form="lora")
    result = train(config, say=lambda _: None)
    lora = result.output
    assert lora.name == "pytorch_lora_weights.safetensors" and lora_preset(lora) == "lcm"
    assert lora_preset(lora.parent / "lora-kohya.safetensors") == "lcm"
    prompts = ["red square, tile 0", "blue square, tile 2"]
    base = _teacher_distance(Engine(sd1), prompts)
    distilled = _teacher_distance(Engine(sd1), prompts, loras=[(str(lora), 1.0)])
    assert distilled < 0.95 * base, (base, distilled)  # measured: 7.84 -> 7.08
    resolved = Engine(sd1).resolve(req(loras=[(str(lora), 1.0)]))
    assert (resolved.sampler, resolved.steps, resolved.cfg_scale) == ("LCM", 4, 1.0)
    ours = capture_latents(Engine(sd1), req(steps=2, loras=[(str(lora), 1.0)]), monkeypatch)
    pipe = _pipe(diffusers.StableDiffusionPipeline, sd1, diffusers.LCMScheduler)
    pipe.load_lora_weights(str(lora))
    theirs = pipe(PROMPT, num_inference_steps=2, guidance_scale=1.0, height=SIZE, width=SIZE,
                  generator=[torch.Generator().manual_seed(1234)], output_type="latent").images
    assert (ours - theirs).abs().max().item() <= 1e-4
    assert np.isfinite(result.losses).all()


@pytest.mark.slow
def test_train_lcm_full_model_declares_its_preset(sd1, tmp_path):
    """The full form writes a model folder whose sfumato.json selects the LCM settings; the LCD loss falls."""
    import numpy as np

    from sfumato.training.config import TrainConfig
    from sfumato.training.trainer import train
    from test_training import _write_images

    data = tmp_path / "data"
    data.mkdir()
    _write_images(data, 6)
    config = TrainConfig(method="lcm", data=str(data), output=str(tmp_path / "run"), model=str(sd1), steps=60,
                         batch_size=2, resolution=32, learning_rate=1e-3, checkpoint_every=60, caption_dropout=0.0,
                         cache_dir=str(tmp_path / "cache"), seed=0, lcm_form="full")
    result = train(config, say=lambda _: None)
    assert json.loads((result.output / "sfumato.json").read_text())["preset"] == "lcm"
    resolved = Engine(result.output).resolve(req())
    assert (resolved.sampler, resolved.steps, resolved.cfg_scale) == ("LCM", 4, 1.0)
    assert np.mean(result.losses[-8:]) < 0.6 * np.mean(result.losses[:8])  # measured: 0.35 -> 0.16


# ----------------------------------------------------------------------------- the embedded model, fast


@pytest.mark.skipif(not (Path(__file__).parent / "data" / "emoji10.json").exists(), reason="no emoji10 data")
def test_fast_draws_recognisable_emoji_in_two_steps(tmp_path, capsys):
    """--fast on sfumato-emoji (named): LCM sampler, 2 steps, CFG 1 (one UNet pass per step) — and the ten captions
    of test_embedded.py still retrieve their own emoji."""
    from PIL import Image
    from test_embedded import DATA, MIN_TOP1_OF_10

    from sfumato.cli import main
    from sfumato.evaluation.features import image_features
    from sfumato.evaluation.metrics import retrieval_ranks
    from sfumato.models.embedded import embedded_model, fast_settings

    if embedded_model("sfumato-emoji") is None:
        pytest.skip("sfumato-emoji is not in this checkout")
    emoji = ["--model", "sfumato-emoji"]
    assert main(["generate", "red apple", "--fast", *emoji, "--seed", "3", "-o", str(tmp_path / "a.png"), "--json"]) == 0
    text = json.loads(capsys.readouterr().out)["images"][0]["infotext"]
    assert "Steps: 2, Sampler: LCM, CFG scale: 1," in text and "Preset: lcm" in text
    assert main(["generate", "red apple", "--fast", "--model", str(tmp_path / "elsewhere")]) == 2
    assert main(["generate", "red apple", "--fast", "--preset", "turbo"]) == 2
    engine = Engine(model="sfumato-emoji")
    names = json.loads((DATA / "emoji10.json").read_text())
    strip = Image.open(DATA / "emoji10.png").convert("RGB")
    real = [strip.crop((32 * i, 0, 32 * i + 32, 32)) for i in range(len(names))]
    fast = fast_settings(embedded_model("sfumato-emoji"))
    generated = [engine.generate(GenerationRequest(name, seed=i, **fast)).images[0].image
                 for i, name in enumerate(names)]
    ranks = retrieval_ranks(image_features(generated), image_features(real), list(range(len(names))))
    assert (ranks == 0).sum() >= MIN_TOP1_OF_10, ranks.tolist()
