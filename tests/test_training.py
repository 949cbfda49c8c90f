"""Training: bucketing, data, caching, checkpoints/resume and every method on tiny models."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.errors import InvalidRequest
from sfumato.training.buckets import epoch_batches, make_buckets, nearest_bucket, plan_buckets
from sfumato.training.config import TrainConfig, load_toml
from sfumato.training.data import scan_folder, shuffle_tags

# ----------------------------------------------------------------- bucketing


def test_buckets_match_the_seed_example():
    buckets = make_buckets(1024, 512, 64)
    assert len(buckets) == 17
    assert buckets[:3] == [(512, 1024), (576, 1024), (640, 1024)]
    assert buckets[7] == (960, 1024) and buckets[8] == (1024, 512)
    assert buckets[-2:] == [(1024, 960), (1024, 1024)]


def test_nearest_bucket_is_argmin_of_aspect_difference():
    buckets = make_buckets(1024, 512, 64)
    index, error = nearest_bucket(1000, 1500, buckets)  # aspect 0.667: 704/1024 = 0.6875 beats 640/1024 = 0.625
    assert buckets[index] == (704, 1024)
    assert error == pytest.approx(abs(704 / 1024 - 1000 / 1500))
    assert buckets[nearest_bucket(1920, 1080, buckets)[0]] == (1024, 576)
    assert buckets[nearest_bucket(500, 500, buckets)[0]] == (1024, 1024)


def test_plan_drops_far_aspects_and_moves_leftovers_to_the_base_bucket():
    buckets = make_buckets(1024, 512, 64)
    sizes = [(1000, 1500)] * 5 + [(1920, 1080)] * 4 + [(5000, 1000)] + [(800, 800)] * 2
    plan = plan_buckets(sizes, buckets, batch_size=4, max_aspect_error=0.5, seed=0)
    assert plan.dropped == 1 and plan.sizes[9] is None  # 5:1 is 3.0 away from the widest bucket (2.0)
    assert len(plan.groups[(704, 1024)]) == 4 and len(plan.groups[(1024, 576)]) == 4
    assert plan.remainder == 1
    assert len(plan.groups[(1024, 1024)]) == 3  # two squares + the leftover portrait
    batches = epoch_batches(plan, 4, seed=0, epoch=0)
    assert sorted(i for b in batches for i in b) == sorted(i for g in plan.groups.values() for i in g)
    for batch in batches:
        assert len({plan.sizes[i] for i in batch}) == 1  # every batch from one bucket
    assert batches == epoch_batches(plan, 4, seed=0, epoch=0)
    assert batches != epoch_batches(plan, 4, seed=0, epoch=1) or len(batches) == 1


def test_buckets_run_out_together():
    buckets = make_buckets(1024, 512, 64)
    sizes = [(1024, 1024)] * 400 + [(1920, 1080)] * 100
    plan = plan_buckets(sizes, buckets, batch_size=4, seed=0)
    batches = epoch_batches(plan, 4, seed=3, epoch=0)
    wide = [k for k, b in enumerate(batches) if plan.sizes[b[0]] == (1024, 576)]
    # drawn proportionally to what remains, the small bucket's batches spread over the whole epoch
    assert wide[0] < len(batches) * 0.3 and wide[-1] > len(batches) * 0.7


# ---------------------------------------------------------------------- data


def _write_images(folder: Path, count: int, size=(32, 32), captions=True, seed=0) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        array = np.zeros((size[1], size[0], 3), dtype=np.uint8)
        array[..., i % 3] = 200
        array[: size[1] // 2] += rng.integers(0, 50, (size[1] // 2, size[0], 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"img{i}.png")
        if captions:
            (folder / f"img{i}.txt").write_text(f"{['red', 'green', 'blue'][i % 3]} square, tile {i}\nvariant {i}")


def test_scan_folder_skips_corrupt_images_and_reads_captions(tmp_path):
    _write_images(tmp_path, 3)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    data = scan_folder(tmp_path)
    assert len(data.examples) == 3 and len(data.skipped) == 1 and "broken.png" in data.skipped[0]
    assert data.examples[0].captions == ("red square, tile 0", "variant 0")


def test_metadata_jsonl_with_caption_variants(tmp_path):
    _write_images(tmp_path / "images", 2, captions=False)
    rows = [{"file_name": "images/img0.png", "text": ["a", "b"]}, {"file_name": "images/img1.png", "text": "c"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    data = scan_folder(tmp_path)
    assert [e.captions for e in data.examples] == [("a", "b"), ("c",)]
    with pytest.raises(InvalidRequest):
        scan_folder(tmp_path / "missing")


def test_shuffle_tags_keeps_the_first():
    out = shuffle_tags("cat, red, fluffy, small, cute", random.Random(1), keep_first=1)
    assert out.startswith("cat, ") and sorted(out.split(", ")) == sorted(["cat", "red", "fluffy", "small", "cute"])


def test_toml_config_is_data_only(tmp_path):
    good = tmp_path / "a.toml"
    good.write_text('steps = 3\nlearning-rate = 0.001\nvalidation_prompts = ["x"]\n')
    assert load_toml(good) == {"steps": 3, "learning_rate": 0.001, "validation_prompts": ["x"]}
    bad = tmp_path / "b.toml"
    bad.write_text('target = "some.module.Class"\n')
    with pytest.raises(InvalidRequest, match="unknown training settings target"):
        load_toml(bad)
    with pytest.raises(InvalidRequest):
        TrainConfig(method="lora", data="d", output="o").validate()  # lora needs --model


# ------------------------------------------------------------------ training


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    folder = tmp_path_factory.mktemp("squares")
    _write_images(folder, 6)
    return folder


@pytest.fixture(scope="module")
def tiny_ldm(tmp_path_factory):
    from sfumato.models.tiny import build_tiny

    return build_tiny("ldm", tmp_path_factory.mktemp("ldm") / "model")


def _config(method: str, data: Path, out: Path, **kw) -> TrainConfig:
    base = dict(method=method, data=str(data), output=str(out), steps=6, batch_size=2, resolution=32,
                learning_rate=1e-3, checkpoint_every=3, cache_dir=str(out.parent / "cache"), seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _quiet(_):
    return None


@pytest.mark.slow
def test_full_finetune_loss_goes_down_and_loads_in_diffusers(tiny_ldm, squares, tmp_path):
    from diffusers import DiffusionPipeline

    from sfumato.training.trainer import train

    result = train(_config("full", squares, tmp_path / "run", model=str(tiny_ldm), steps=40, caption_dropout=0.0,
                           learning_rate=2e-3), say=_quiet)
    first, last = np.mean(result.losses[:8]), np.mean(result.losses[-8:])
    assert last < first * 0.7, (first, last)
    assert (tmp_path / "run" / "loss.png").exists() and (tmp_path / "run" / "log.csv").exists()
    pipe = DiffusionPipeline.from_pretrained(str(result.output), local_files_only=True)
    trained = dict(pipe.unet.named_parameters())
    original = dict(DiffusionPipeline.from_pretrained(str(tiny_ldm), local_files_only=True).unet.named_parameters())
    assert not torch.equal(trained["conv_in.weight"], original["conv_in.weight"])


def test_cache_is_reused_without_a_second_vae_pass(tiny_ldm, squares, tmp_path):
    from sfumato.training.trainer import train

    first = train(_config("full", squares, tmp_path / "a", model=str(tiny_ldm), steps=1, flip=True), say=_quiet)
    assert first.cache.latents_computed == 12 and first.cache.latents_loaded == 0  # 6 images x (plain, flipped)
    second = train(_config("full", squares, tmp_path / "b", model=str(tiny_ldm), steps=1, flip=True), say=_quiet)
    assert second.cache.latents_computed == 0 and second.cache.latents_loaded == 12
    assert second.cache.texts_computed == 0 and second.cache.texts_loaded > 0
    assert first.cache.folders == second.cache.folders


@pytest.mark.slow
def test_resume_continues_the_same_loss_trajectory(tiny_ldm, squares, tmp_path):
    from sfumato.training.trainer import train

    kw = dict(model=str(tiny_ldm), steps=8, checkpoint_every=4, ema_decay=0.9, caption_dropout=0.3, flip=True)
    straight = train(_config("full", squares, tmp_path / "straight", **kw), say=_quiet)
    train(_config("full", squares, tmp_path / "split", **{**kw, "steps": 4}), say=_quiet)
    resumed = train(_config("full", squares, tmp_path / "split", **kw, resume=True), say=_quiet)
    assert len(resumed.losses) == 8
    np.testing.assert_allclose(resumed.losses, straight.losses, rtol=1e-5)


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    from sfumato.training import checkpoints as ckpt

    param = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.AdamW([param])
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    ckpt.save_checkpoint(tmp_path, 1, {"w": param}, None, optimizer, scheduler, {})

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "rng_state", crash)  # dies half-way through writing step 2
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 2, {"w": param * 2}, None, optimizer, scheduler, {})
    latest = ckpt.latest_checkpoint(tmp_path)
    assert latest.name == "step-0000001"
    assert torch.equal(ckpt.load_checkpoint(latest)[0]["w"], torch.ones(3))
    monkeypatch.undo()
    for step in (3, 4, 5):
        ckpt.save_checkpoint(tmp_path, step, {"w": param}, None, optimizer, scheduler, {}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*")) == ["step-0000004", "step-0000005"]


@pytest.mark.slow
def test_scratch_training_writes_a_model_sfumato_generates_with(tiny_ldm, squares, tmp_path):
    from sfumato.engine import Engine
    from sfumato.models.tiny import tiny_bert
    from sfumato.requests import GenerationRequest
    from sfumato.training.trainer import train

    encoder, tokenizer = tiny_bert()
    encoder.save_pretrained(tmp_path / "te")
    tokenizer.save_pretrained(tmp_path / "te")
    unet_config = json.loads((tiny_ldm / "unet" / "config.json").read_text())
    (tmp_path / "unet.json").write_text(json.dumps(unet_config))
    result = train(_config("scratch", squares, tmp_path / "run", unet_config=str(tmp_path / "unet.json"),
                           vae=str(tiny_ldm / "vae"), text_encoder=str(tmp_path / "te"), text_chunk_length=14,
                           validate_every=3, validation_prompts=["red square"], validation_steps=2,
                           validation_retrieval=4), say=_quiet)
    assert (tmp_path / "run" / "samples" / "step-0000006.png").exists()
    with open(tmp_path / "run" / "validation.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["extractor"], r["examples"]) for r in rows] == [("3", "open-nsfw-resnet50-pool1024", "4"),
                                                                          ("6", "open-nsfw-resnet50-pool1024", "4")]
    assert all(0.0 <= float(r["top1"]) <= float(r["top5"]) == 1.0 for r in rows)  # top-5 among 4 is always a hit
    assert Image.open(tmp_path / "run" / "validation.png").size == (700, 400)
    image = Engine(result.output).generate(GenerationRequest("red square", seed=3, steps=3)).images[0].image
    assert image.size == (16, 16)  # native size: UNet sample_size 8 x VAE factor 2


def test_scratch_dit_trains_saves_and_generates_as_the_ldm_family(tiny_ldm, squares, tmp_path):
    """`--arch dit`: a text-conditioned DiT (PixArt-α blocks, patch 2) in the UNet's place; the loss falls on a
    repeated batch, the folder names its diffusers base class (plain diffusers can read the index) and our class in
    the component config, and the engine generates with it like with the UNet."""
    from sfumato.engine import Engine
    from sfumato.errors import InvalidRequest
    from sfumato.models.textdit import TextDiT
    from sfumato.models.tiny import tiny_bert
    from sfumato.requests import GenerationRequest
    from sfumato.training.trainer import train

    encoder, tokenizer = tiny_bert()
    encoder.save_pretrained(tmp_path / "te")
    tokenizer.save_pretrained(tmp_path / "te")
    (tmp_path / "dit.json").write_text(json.dumps({"_class_name": "TextDiT", "sample_size": 8, "patch_size": 2,
                                                  "num_layers": 2, "num_attention_heads": 2, "attention_head_dim": 16}))
    result = train(_config("scratch", squares, tmp_path / "run", unet_config=str(tmp_path / "dit.json"), arch="dit",
                           vae=str(tiny_ldm / "vae"), text_encoder=str(tmp_path / "te"), text_chunk_length=14,
                           steps=30, batch_size=6, caption_dropout=0.0, learning_rate=2e-3), say=_quiet)
    assert sum(result.losses[-5:]) < 0.8 * sum(result.losses[:5])
    index = json.loads((result.output / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "PixArtTransformer2DModel"]
    assert json.loads((result.output / "unet" / "config.json").read_text())["_class_name"] == "TextDiT"
    engine = Engine(result.output)
    assert engine.describe().family.name == "ldm"
    request = GenerationRequest("red square", seed=3, steps=3)
    image = engine.generate(request).images[0].image
    assert isinstance(engine.load().pipe.unet, TextDiT) and image.size == (16, 16)
    again = engine.generate(request).images[0].image
    assert np.array_equal(np.asarray(image), np.asarray(again))
    from sfumato.errors import UnsupportedModel

    with pytest.raises(UnsupportedModel, match="DiT denoiser: step caching need a UNet"):
        engine.generate(GenerationRequest("red square", seed=3, steps=3, cache_interval=2))
    with pytest.raises(InvalidRequest, match="arch must be unet or dit"):
        _config("lora", squares, tmp_path / "x", model=str(tiny_ldm), arch="dit").validate()


class _Replay:
    """An engine that 'generates' given images, to check the probe's bookkeeping."""

    def __init__(self, images):
        self.images, self.prompts = images, []

    def generate_many(self, requests):
        from types import SimpleNamespace

        out = []
        for r in requests:
            self.prompts.append(r.prompt)
            out.append(SimpleNamespace(images=[SimpleNamespace(image=self.images[r.seed])]))
        return out


def test_validation_retrieval_pairs_each_caption_with_its_own_image(squares):
    from sfumato.training.buckets import plan_buckets
    from sfumato.training.data import load_pixels, scan_folder
    from sfumato.training.validation import RetrievalProbe, _pil

    dataset = scan_folder(squares)
    plan = plan_buckets([(32, 32)] * len(dataset.examples), [(32, 32)], batch_size=2)
    probe = RetrievalProbe.build(3, "open-nsfw", dataset, plan)
    picked = [0, 2, 5]  # evenly spaced over 6 examples
    assert probe.prompts == [dataset.examples[i].captions[0] for i in picked] and probe.sizes == [(32, 32)] * 3
    real = [_pil(load_pixels(dataset.examples[i].path, 32, 32)) for i in picked]
    engine = _Replay(real)
    assert probe.score(engine, steps=2) == {"extractor": "open-nsfw-resnet50-pool1024", "examples": 3,
                                            "top1": 1.0, "top5": 1.0}
    assert engine.prompts == probe.prompts
    shifted = _Replay(real[1:] + real[:1])  # every caption gets another example's image
    assert probe.score(shifted, steps=2)["top1"] == 0.0


def _engine_image(model: Path, prompt: str = "red square", **kw) -> np.ndarray:
    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest

    request = GenerationRequest(prompt, seed=5, steps=3, sampler="Euler", width=32, height=32, **kw)
    return np.asarray(Engine(model).generate(request).images[0].image, dtype=np.float32)


@pytest.mark.slow
def test_lora_loads_in_diffusers_and_in_sfumato_in_both_formats(sd1, squares, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from sfumato.training.trainer import train

    result = train(_config("lora", squares, tmp_path / "run", model=str(sd1), rank=4, learning_rate=5e-2,
                           train_text_encoder=True), say=_quiet)
    assert result.output.name == "pytorch_lora_weights.safetensors"
    pipe = StableDiffusionPipeline.from_pretrained(str(sd1), local_files_only=True)
    pipe.load_lora_weights(str(result.output))
    assert any("lora" in n for n, _ in pipe.unet.named_parameters())
    base = _engine_image(sd1)
    with_lora = _engine_image(sd1, loras=[(str(result.output), 1.0)])
    with_kohya = _engine_image(sd1, loras=[(str(result.output.parent / "lora-kohya.safetensors"), 1.0)])
    assert np.abs(with_lora - base).max() > 1
    np.testing.assert_allclose(with_kohya, with_lora, atol=2)


@pytest.mark.slow
def test_oft_adapter_changes_generation(sd1, squares, tmp_path):
    from sfumato.training.trainer import train

    result = train(_config("oft", squares, tmp_path / "run", model=str(sd1), rank=4, learning_rate=5e-2), say=_quiet)
    assert result.output.name == "oft.safetensors"
    base = _engine_image(sd1)
    assert np.abs(_engine_image(sd1, loras=[(str(result.output), 1.0)]) - base).max() > 1
    np.testing.assert_array_equal(_engine_image(sd1), base)  # adapter off again when not requested


@pytest.mark.slow
def test_textual_inversion_embedding_loads_and_changes_generation(sd1, squares, tmp_path, monkeypatch):
    import shutil

    from diffusers import StableDiffusionPipeline
    from safetensors.torch import load_file

    from sfumato.training.trainer import train

    result = train(_config("textual-inversion", squares, tmp_path / "run", model=str(sd1), token="sqtok",
                           initializer_token="square", num_vectors=2, learning_rate=5e-2), say=_quiet)
    assert load_file(str(result.output))["emb_params"].shape == (2, 32)
    pipe = StableDiffusionPipeline.from_pretrained(str(sd1), local_files_only=True)
    pipe.load_textual_inversion(str(result.output), token="sqtok")
    assert len(pipe.tokenizer) == 49408 + 2
    home = Path(__import__("os").environ["SFUMATO_HOME"])
    (home / "embeddings").mkdir(parents=True)
    shutil.copy(result.output, home / "embeddings" / "sqtok.safetensors")
    assert np.abs(_engine_image(sd1, "a sqtok") - _engine_image(sd1, "a square")).max() > 1


def test_dreambooth_generates_class_images_and_trains_with_prior_loss(sd1, squares, tmp_path):
    from sfumato.training.trainer import train

    result = train(_config("dreambooth", squares, tmp_path / "run", model=str(sd1), instance_prompt="a sks square",
                           class_prompt="a square", num_class_images=3, validation_steps=2), say=_quiet)
    assert len(list((tmp_path / "run" / "class_images").glob("class-*.png"))) == 3
    assert result.dataset_size == 6 + 3 and result.steps == 6
    assert (result.output / "model_index.json").exists()


@pytest.mark.slow
def test_two_process_run_with_accelerate_launch(tiny_ldm, squares, tmp_path):
    """`accelerate launch` with 2 CPU processes (gloo): both train on their half of each batch."""
    import subprocess
    import sys

    out = tmp_path / "run"
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "sfumato.cli",
               "train", "full", "--model", str(tiny_ldm), "--data", str(squares), "--output", str(out), "--steps", "3",
               "--batch-size", "2", "--resolution", "32", "--cache-dir", str(tmp_path / "cache")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout[done.stdout.index("{"):])
    assert report["processes"] == 2 and report["steps"] == 3
    assert (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert len((out / "log.csv").read_text().splitlines()) == 1 + 3


@pytest.mark.slow
def test_two_machine_recipe_with_accelerate_launch(tiny_ldm, squares, tmp_path, spawn):
    """The multi-node recipe of the README: one `accelerate launch` per machine (--num_machines 2, --machine_rank,
    the main machine's address and port), here two "machines" on loopback, each with its own cache folder."""
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    out = tmp_path / "run"
    launches = []
    for rank in (0, 1):
        command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
                   "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
                   "--main_process_port", str(port), "--mixed_precision", "no", "--dynamo_backend", "no",
                   "-m", "sfumato.cli", "train", "full", "--model", str(tiny_ldm), "--data", str(squares), "--output",
                   str(out), "--steps", "3", "--batch-size", "2", "--resolution", "32", "--cache-dir",
                   str(tmp_path / f"cache-{rank}")]
        launches.append(spawn(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [launch.communicate(timeout=600) for launch in launches]
    assert [launch.returncode for launch in launches] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    report = json.loads(outputs[0][0][outputs[0][0].index("{"):])  # the main machine reports
    assert report["processes"] == 2 and report["steps"] == 3
    assert outputs[1][0].strip() == ""  # the other machine trains its share and prints nothing
    assert (out / "model" / "unet" / "diffusion_pytorch_model.safetensors").exists()


def test_train_cli_errors_are_one_line(tmp_path, sd1):
    from sfumato.cli import main

    assert main(["train", "lora", "--data", str(tmp_path), "--output", str(tmp_path / "o")]) == 2
    assert main(["train", "lora", "--model", str(sd1), "--data", str(tmp_path / "none"), "--output",
                 str(tmp_path / "o")]) == 2


def test_emoji_dataset_renders_with_captions(tmp_path):
    from sfumato.training.emoji_data import EMOJI_TEST_PATH, FONT_PATH, build_emoji_dataset, parse_emoji_test

    if not (FONT_PATH.exists() and EMOJI_TEST_PATH.exists()):
        pytest.skip("apt-get install fonts-noto-color-emoji unicode-data")
    emoji = parse_emoji_test()
    assert len(emoji) == 3655 and sum(e.base for e in emoji) == 1870
    assert build_emoji_dataset(tmp_path, 64, base_only=True, limit=4) == 4
    first = json.loads((tmp_path / "metadata.jsonl").read_text().splitlines()[0])
    assert first["text"] == ["grinning face", "an emoji of a grinning face", "grinning face, smileys and emotion"]
    image = np.asarray(Image.open(tmp_path / first["file_name"]))
    assert image.shape == (64, 64, 3) and image[0, 0].tolist() == [255, 255, 255] and image[32, 32, 0] > 200


def test_train_lora_from_the_cli_with_a_toml_config(sd1, squares, tmp_path, capsys):
    from sfumato.cli import main

    config = tmp_path / "run.toml"
    config.write_text(f'data = "{squares}"\nsteps = 2\nbatch-size = 2\nresolution = 32\nrank = 2\n')
    out = tmp_path / "run"
    code = main(["train", "lora", "--config", str(config), "--model", str(sd1), "--output", str(out),
                 "--cache-dir", str(tmp_path / "cache")])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["steps"] == 2 and report["images"] == 6
    assert (out / "lora" / "pytorch_lora_weights.safetensors").exists()
    assert (out / "lora" / "lora-kohya.safetensors").exists()


def test_train_vae_from_the_cli_and_resume(squares, tmp_path, capsys):
    from diffusers import AutoencoderKL

    from sfumato.cli import main

    vae_config = tmp_path / "vae.json"
    vae_config.write_text('{"block_out_channels": [32, 32], "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],'
                          ' "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"], "mid_block_add_attention": false}')
    args = ["train", "vae", "--data", str(squares), "--output", str(tmp_path / "run"), "--resolution", "16",
            "--batch-size", "4", "--learning-rate", "1e-3", "--checkpoint-every", "2", "--vae-config", str(vae_config)]
    assert main([*args, "--steps", "2"]) == 0
    assert main([*args, "--steps", "4", "--resume"]) == 0
    out = capsys.readouterr().out.strip().splitlines()[-1]
    vae = AutoencoderKL.from_pretrained(out)
    assert vae.config.scaling_factor != 0.18215 and vae.config.sample_size == 16
    assert len((tmp_path / "run" / "log.csv").read_text().splitlines()) == 1 + 4
    assert (tmp_path / "run" / "reconstructions.png").exists() and (tmp_path / "run" / "loss.png").exists()
    # --decoder-only: the encoder (so the latent space and its scale) stays, the decoder learns
    tuned = ["train", "vae", "--data", str(squares), "--output", str(tmp_path / "tuned"), "--resolution", "16",
             "--batch-size", "4", "--learning-rate", "1e-2", "--steps", "3", "--vae", out, "--decoder-only"]
    assert main(tuned) == 0
    after = AutoencoderKL.from_pretrained(capsys.readouterr().out.strip().splitlines()[-1])
    assert after.config.scaling_factor == vae.config.scaling_factor
    before_state, after_state = vae.state_dict(), after.state_dict()
    changed = {k.split(".")[0] for k in before_state if not torch.equal(before_state[k], after_state[k])}
    assert changed == {"decoder", "post_quant_conv"}, changed
    assert main([*tuned[:-3], "--decoder-only"]) == 2  # nothing to fine-tune: one line, usage error
    assert "--decoder-only" in capsys.readouterr().err


@pytest.mark.slow
def test_controlnet_training_only_trains_the_controlnet_and_its_output_controls(tiny_ldm, squares, tmp_path):
    """`train controlnet`: the UNet stays frozen, the zero convolutions leave zero, the folder loads as a control
    model; the warped-image variant (stage 2 of the emoji ControlNet) starts from a given ControlNet."""
    from diffusers import UNet2DConditionModel

    from sfumato.control.models import load_control_model
    from sfumato.engine import Engine
    from sfumato.requests import GenerationRequest
    from sfumato.training.trainer import train

    before = UNet2DConditionModel.from_pretrained(str(tiny_ldm), subfolder="unet").state_dict()
    result = train(_config("controlnet", squares, tmp_path / "run", model=str(tiny_ldm), steps=6,
                           learning_rate=1e-2, preprocessor="canny"), say=_quiet)
    assert result.output.name == "controlnet" and (result.output / "sfumato.json").exists()
    net = load_control_model(result.output).module
    assert net.controlnet_mid_block.weight.abs().max() > 0  # trained away from zero
    after = UNet2DConditionModel.from_pretrained(str(tiny_ldm), subfolder="unet").state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    map_image = tmp_path / "map.png"
    Image.fromarray(np.where(np.indices((32, 32)).sum(0) % 9 == 0, 255, 0).astype(np.uint8)).convert("RGB").save(
        map_image)
    engine = Engine(tiny_ldm)
    request = GenerationRequest(prompt="a red square", seed=1, steps=3, width=32, height=32)
    plain = np.asarray(engine.generate(request).images[0].image, np.int16)
    controlled = engine.generate(GenerationRequest(**{**request.to_dict(), "controls": [
        {"image": str(map_image), "model": str(result.output)}]})).images[0].image
    assert np.abs(np.asarray(controlled, np.int16) - plain).max() > 0
    warped = train(_config("controlnet", squares, tmp_path / "warp", model=str(tiny_ldm), steps=3,
                           controlnet=str(result.output), control_augment=1.0), say=_quiet)
    assert load_control_model(warped.output).module.config.conditioning_embedding_out_channels == \
        net.config.conditioning_embedding_out_channels


@pytest.mark.slow
def test_vqgan_trains_with_a_codebook_discriminator_and_dead_code_restarts(squares, tmp_path, capsys):
    """A tiny `sfumato train vqgan` run: the reconstruction loss falls, several codes are used, dead codes are
    restarted, the discriminator joins after --disc-start, and the output is a diffusers VQModel."""
    import csv

    from diffusers import VQModel

    from sfumato.cli import main

    out = tmp_path / "vq"
    code = main(["train", "vqgan", "--data", str(squares), "--output", str(out), "--steps", "60", "--batch-size", "4",
                 "--resolution", "32", "--learning-rate", "3e-4", "--codebook-size", "32", "--disc-start", "40",
                 "--restart-every", "10", "--holdout", "0.2"])
    assert code == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open(out / "log.csv")))
    first = sum(float(r["reconstruction"]) for r in rows[:5]) / 5
    last = sum(float(r["reconstruction"]) for r in rows[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    assert all(float(r["discriminator"]) == 0 for r in rows[:40]) and any(float(r["discriminator"]) > 0
                                                                           for r in rows[40:])
    assert max(float(r["usage"]) for r in rows) * 32 > 1  # more than one code in use
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["codes_restarted"] > 0 and metrics["heldout_images"] == 1 and metrics["psnr"] > 5
    model = VQModel.from_pretrained(str(out / "vqmodel"))
    assert model.config.num_vq_embeddings == 32
    assert (out / "codebook.png").stat().st_size > 0 and (out / "reconstructions.png").exists()


def test_cache_identity_of_weights_does_not_depend_on_the_thread_count():
    """A float32 sum's last digits depend on how many threads summed: the cache key of a model must not, or a run with
    another OMP_NUM_THREADS recomputes every cached latent and caption."""
    from sfumato.training.cache import weights_fingerprint

    torch.manual_seed(0)
    module = torch.nn.Linear(1024, 1024)
    with torch.no_grad():
        module.weight.mul_(1e3).add_(7.0)
    threads = torch.get_num_threads()
    try:
        seen = set()
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            seen.add(weights_fingerprint(module))
    finally:
        torch.set_num_threads(threads)
    assert len(seen) == 1
    with torch.no_grad():
        module.weight[0, 0] += 1.0
    assert weights_fingerprint(module) not in seen


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_resume_continues_from_it(sd1, squares, tmp_path):
    """A run stopped by SIGTERM (or Ctrl-C) finishes its step, saves a checkpoint and exits 0; --resume goes on."""
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    args = [sys.executable, "-m", "sfumato.cli", "train", "lora", "--model", str(sd1), "--data", str(squares),
            "--output", str(out), "--batch-size", "2", "--resolution", "32", "--rank", "2",
            "--checkpoint-every", "1000", "--cache-dir", str(tmp_path / "cache")]
    proc = subprocess.Popen([*args, "--steps", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "log.csv"
    deadline = time.time() + 120
    while time.time() < deadline and (not log.exists() or len(log.read_text().splitlines()) < 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr[-800:]
    report = json.loads(stdout)
    stopped_at = report["steps"]
    assert report["stopped"] is True and 2 <= stopped_at < 100000
    assert (out / "checkpoints" / f"step-{stopped_at:07d}").is_dir()
    assert "continue with --resume" in stderr
    done = subprocess.run([*args, "--steps", str(stopped_at + 2), "--resume"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-800:]
    again = json.loads(done.stdout)
    assert again["steps"] == stopped_at + 2 and again["stopped"] is False
    assert f"resumed from step-{stopped_at:07d} (step {stopped_at})" in done.stderr
