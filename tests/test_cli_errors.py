"""Every subcommand with bad input: one line on stderr, exit 2 (usage) or 1 (runtime), never a traceback."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image, PngImagePlugin

from sfumato.cli import build_parser, main

FAST = ["--steps", "1", "-W", "32", "-H", "32"]


def run_any(capsys, *argv) -> tuple[int, str]:
    """main() in-process; argparse's own exits count too. Returns (exit code, stderr)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, (argv, out + err)
    return code, err


@pytest.fixture
def files(tmp_path):
    """Bad inputs of every kind."""
    text = tmp_path / "not-an-image.png"
    text.write_text("hello")
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    bad_meta = tmp_path / "bad-meta.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("sfumato", '{"request": {"prompt": 3, "steps": "many"}}')
    Image.new("RGB", (8, 8)).save(bad_meta, pnginfo=info)
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"\x80\x04K\x01.")
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"\xff" * 64)
    toml = tmp_path / "bad.toml"
    toml.write_text("steps = [unclosed")
    empty = tmp_path / "empty"
    empty.mkdir()
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a\n")
    bad_jobs = tmp_path / "bad-jobs.jsonl"
    bad_jobs.write_text('{"prompt": "a"}\n{"prompt": "b", "steps": 0}\n')
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text('{"prompt": "a", "steps": 1}\n')
    corrupt_parquet = tmp_path / "jobs.parquet"
    corrupt_parquet.write_bytes(b"PAR1 not really")
    binary_jsonl = tmp_path / "binary.jsonl"
    binary_jsonl.write_bytes(b"\xff\xfe\x00garbage\n")
    return dict(text=text, plain=plain, bad_meta=bad_meta, pickle=pickle, corrupt=corrupt, toml=toml, empty=empty,
                prompts=prompts, missing=tmp_path / "missing", tmp=tmp_path, bad_jobs=bad_jobs, jobs=jobs,
                corrupt_parquet=corrupt_parquet, binary_jsonl=binary_jsonl)


CASES = [
    # (argv with {placeholders}, exit code)
    (["generate"], 2),
    (["generate", "x", "--model", "{missing}"], 2),
    (["generate", "x", "--model", "{pickle}"], 2),
    (["generate", "x", "--model", "{corrupt}"], 2),
    (["generate", "x", "--model", "{sd1}", "--steps", "0"], 2),
    (["generate", "x", "--model", "{sd1}", "--steps", "many"], 2),
    (["generate", "x", "--model", "{sd1}", "--sampler", "nope"], 2),
    (["generate", "x --bogus 3", "--model", "{sd1}"], 2),
    (["generate", "x", "--model", "{sd1}", "-W", "33"], 2),
    (["generate", "x", "--model", "{sd1}", "--init-image", "{text}"], 2),
    (["generate", "x", "--model", "{sd1}", "--init-image", "{missing}"], 2),
    (["generate", "x", "--model", "{sd1}", "--mask", "{plain}"], 2),
    (["generate", "x", "--model", "{sd1}", "-o", "/proc/forbidden/x.png", *FAST], 2),
    (["generate", "x", "--model", "{sd1}", "-o", "{tmp}/x.jpg", *FAST], 2),
    (["generate", "x", "--model", "{sd1}", "--lora", "{missing}", *FAST], 2),
    (["generate", "x", "--model", "{sd1}", "--outpaint", "left=abc"], 2),
    (["info", "{missing}"], 2),
    (["info", "{text}"], 2),
    (["info", "{plain}"], 2),
    (["info", "{bad_meta}"], 2),
    (["replay", "{plain}", "-o", "{tmp}/r.png"], 2),
    (["replay", "{missing}"], 2),
    (["convert", "{missing}", "{tmp}/o.safetensors"], 2),
    (["convert", "{pickle}", "{tmp}/o.safetensors"], 2),
    (["convert", "{pickle}", "{tmp}/o.safetensors", "--allow-pickle"], 2),
    (["convert", "{corrupt}", "{tmp}/o"], 2),
    (["make-tiny", "nope", "{tmp}/t"], 2),
    (["make-tiny", "sd1", "/proc/forbidden/t"], 1),
    (["train", "lora"], 2),
    (["train", "lora", "--model", "{sd1}", "--data", "{missing}", "--output", "{tmp}/run"], 2),
    (["train", "lora", "--config", "{toml}"], 2),
    (["train", "lora", "--model", "{sd1}", "--data", "{empty}", "--output", "{tmp}/run", "--steps", "-3"], 2),
    (["eval", "psnr", "{missing}", "{plain}"], 2),
    (["eval", "ssim", "{text}", "{plain}"], 2),
    (["eval", "fid", "--real", "{empty}", "--fake", "{empty}"], 2),
    (["eval", "kid", "--real", "{missing}", "--fake", "{empty}"], 2),
    (["eval", "tssim", "{missing}"], 2),
    (["eval", "report", "{missing}"], 2),
    (["eval", "steps", "--model", "{sd1}", "--prompts", "{prompts}", "--steps", "x"], 2),
    (["eval", "clip-score", "--fake", "{empty}", "--clip-model", "{missing}"], 2),
    (["grid", "x", "--model", "{sd1}", "--x", "nonsense=1,2"], 2),
    (["grid", "x", "--model", "{sd1}", "--x", "steps=a,b"], 2),
    (["serve", "--model", "{missing}"], 2),
    (["serve", "--host", "0.0.0.0"], 2),
    (["serve", "--api-key-file", "{missing}"], 2),
    (["serve", "--port", "http"], 2),
    (["data", "nope", "{tmp}/d"], 2),
    (["models", "--bogus"], 2),
    (["families", "--bogus"], 2),
    (["animate", "x", "--model", "{sd1}", "--mode", "video-model", "--frames", "5"], 2),
    (["generate", "x", "--model", "{sd1}", "--reference-image", "{missing}"], 2),
    (["preprocess", "canny", "{missing}", "-o", "{tmp}/m.png"], 2),
    (["preprocess", "depth", "{missing}", "-o", "{tmp}/m.png"], 2),
    (["preprocess", "sparkles", "{missing}", "-o", "{tmp}/m.png"], 2),
    (["preprocess", "canny", "{missing}", "-o", "{tmp}/m.jpg"], 2),
    (["generate", "x", "--model", "{sd1}", "--control", "canny"], 2),
    (["generate", "x", "--model", "{sd1}", "--control", "canny:{missing}:nope:0.5"], 2),
    (["generate", "x", "--model", "{sd1}", "--ip-adapter", "{missing}"], 2),
    (["upscale", "{missing}"], 2),
    (["upscale", "{text}"], 2),
    (["upscale", "{plain}", "--upscaler", "SwinIR_4x", "-o", "{tmp}/u.png"], 2),
    (["upscale", "{plain}", "--upscaler", "{pickle}", "-o", "{tmp}/u.png"], 2),
    (["upscale", "{plain}", "--scale", "100", "-o", "{tmp}/u.png"], 2),
    (["upscale", "{plain}", "-o", "{tmp}/u.jpg"], 2),
    (["upscalers", "--bogus"], 2),
    (["colorize", "{missing}", "--model", "{sd1}"], 2),
    (["restore", "{plain}", "--model", "{sd1}", "--upscaler", "nope"], 2),
    (["style", "{plain}", "--model", "{sd1}", "--strength", "2"], 2),
    (["generate", "x", "--model", "{sd1}", "--sd-upscale", "9"], 2),
    (["generate", "x", "--model", "{sd1}", "--hires-scale", "2", "--hires-upscaler", "nope"], 2),
    (["generate", "x", "--model", "{sd1}", "--colorize"], 2),
    (["generate", "x", "--model", "{sd1}", "--compile", "fastest"], 2),
    (["generate", "x", "--model", "{sd1}", "--cache-interval", "11", *FAST], 2),
    (["serve", "--compile", "fastest"], 2),
    (["merge", "{missing}", "{sd1}", "-o", "{tmp}/m.safetensors"], 2),
    (["merge", "{sd1}", "{sd1}", "-o", "{tmp}/m", "--block-weights", "a,b"], 2),
    (["merge", "{sd1}", "{sd1}", "-o", "{tmp}/m", "--block-weights", "0.5", "--block-preset", "GRAD_V"], 2),
    (["merge", "{sd1}", "{corrupt}", "-o", "{tmp}/m"], 2),
    (["merge", "{sd1}", "{sd1}", "-o", "{tmp}/m", "--block-weights", "0.5,0.5"], 2),
    (["lora"], 2),
    (["lora", "merge", "{missing}", "-o", "{tmp}/l.safetensors"], 2),
    (["lora", "merge", "{corrupt}", "-o", "{tmp}/l.safetensors"], 2),
    (["lora", "bake", "{sd1}", "--lora", "{pickle}", "-o", "{tmp}/b"], 2),
    (["lora", "extract", "{sd1}", "{missing}", "-o", "{tmp}/e.safetensors"], 2),
    (["lora", "extract", "{sd1}", "{sd1}", "-o", "{tmp}/e.safetensors", "--rank", "0"], 2),
    (["portrait"], 2),
    (["portrait", "train", "{missing}", "-o", "{tmp}/p", "--model", "{sd1}"], 2),
    (["portrait", "train", "{empty}", "-o", "{tmp}/p", "--model", "{sd1}"], 2),
    (["portrait", "generate", "{missing}", "-o", "{tmp}/p.png"], 2),
    (["portrait", "generate", "{empty}", "-o", "{tmp}/p.png"], 2),
    (["train", "vqgan", "--data", "{empty}", "--output", "{tmp}/o", "--codebook-size", "1"], 2),
    (["batch"], 2),
    (["batch", "{jobs}"], 2),
    (["batch", "{prompts}", "--out", "{tmp}/o"], 2),
    (["batch", "{missing}.jsonl", "--out", "{tmp}/o"], 2),
    (["batch", "{bad_jobs}", "--out", "{tmp}/o"], 2),
    (["batch", "{jobs}", "--out", "{tmp}/o", "--batch-size", "0"], 2),
    (["batch", "{jobs}", "--out", "{tmp}/o", "--ray", "--replicas", "0"], 2),
    (["batch", "{jobs}", "--out", "{text}"], 2),
    (["batch", "{corrupt_parquet}", "--out", "{tmp}/o"], 2),
    (["batch", "{binary_jsonl}", "--out", "{tmp}/o"], 2),
    (["serve", "--store", "mysql://db/x", "--data-dir", "{tmp}/d"], 2),
    (["serve", "--store", "postgresql://nobody@127.0.0.1:1/x", "--data-dir", "{tmp}/d"], 1),
    (["serve", "--store-lease", "0", "--data-dir", "{tmp}/d"], 2),
    (["serve", "--ray", "--replicas", "0", "--data-dir", "{tmp}/d"], 2),
    (["serve", "--ray", "--autoscale", "x", "--data-dir", "{tmp}/d"], 2),
    (["eval", "fid", "--fake", "{tmp}/none.parquet", "--real", "{empty}"], 2),
    (["animate", "--model", "{sd1}"], 2),
    (["views"], 2),
    (["comfy"], 2),
    (["comfy", "run", "{missing}"], 2),
    (["comfy", "run", "{pickle}"], 2),
    (["comfy", "run", "{corrupt}"], 2),
    (["views", "a robot", "--model", "{sd1}", "--views", "front"], 2),
    (["views", "a robot", "--model", "{sd1}", "--views", "front,sideways"], 2),
    (["views", "a {{red|blue}} robot", "--model", "{sd1}"], 2),
    (["views", "a robot", "--model", "{sd1}", "--consistent", "7"], 2),
    (["views", "a robot", "--model", "{missing}"], 2),
    (["generate", "x", "--model", "{sd1}", "--consistent", "3"], 2),
    (["generate", "x", "--model", "{sd1}", "--control", "reference_only:{missing}"], 2),
    (["animate", "x", "--model", "{sd1}", "--mode", "loopback", "--consistent"], 2),
    (["animate", "x", "--model", "{sd1}", "--mode", "dance"], 2),
    (["animate", "x", "--model", "{sd1}", "--keyframes", '0: "unterminated'], 2),
    (["animate", "x", "--model", "{sd1}", "--keyframes", '0: "a", x: "b"'], 2),
    (["animate", "x", "--model", "{sd1}", "--strength", "0:(0.5), 9:zz"], 2),
    (["animate", "x", "--model", "{sd1}", "--mode", "video"], 2),
    (["animate", "x", "--model", "{sd1}", "--mode", "video", "--video", "{missing}"], 2),
    (["animate", "x", "--model", "{sd1}", "--mode", "video", "--video", "{text}"], 2),
    (["animate", "x", "--model", "{sd1}", "--mode", "interpolate", "--image", "{plain}"], 2),
    (["animate", "x", "--model", "{sd1}", "--mode", "motion"], 2),
    (["animate", "x", "--model", "{sd1}", "--format", "avi"], 2),
    (["animate", "x", "--model", "{sd1}", "--frames", "0"], 2),
    (["animate", "x", "--model", "{sd1}", "-o", "{plain}"], 2),
    (["generate", "x", "--model", "{sd1}", "--direction", "x AND y|x"], 2),
    (["convert", "{sd1}", "{tmp}/o.gguf", "--quant", "q4_k"], 2),
    (["convert", "{sd1}", "{tmp}/o.safetensors", "--quant", "q8_0"], 2),
    (["convert", "{missing}", "{tmp}/o.gguf"], 2),
    (["generate", "x", "--model", "{sd1}", "--quantize", "int4"], 2),
    (["generate", "x", "--model", "{sd1}", "--offload", "disk"], 2),
    (["nonsense"], 2),
]


@pytest.mark.parametrize("argv, expected", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_bad_input_is_one_line(capsys, files, sd1, argv, expected):
    values = {**files, "sd1": sd1}
    code, err = run_any(capsys, *[a.format(**values) for a in argv])
    assert code == expected, err
    lines = [line for line in err.strip().splitlines() if line.strip()]
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # progress lines may precede the one error line


def test_every_subcommand_is_walked():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    walked = {c[0][0] for c in CASES}
    assert set(commands) <= walked, set(commands) - walked


def test_bad_output_path_fails_before_generating(capsys, sd1, monkeypatch):
    from sfumato import engine

    monkeypatch.setattr(engine.Engine, "generate", lambda *a, **k: pytest.fail("generated before checking -o"))
    code, err = run_any(capsys, "generate", "a cat", "--model", sd1, "-o", "/proc/forbidden/x.png")
    assert code == 2 and "/proc/forbidden" in err


def test_full_disk_is_one_line_and_leaves_no_partial_file(capsys, sd1, tmp_path, monkeypatch):
    save = Image.Image.save

    def full(self, fp, *args, **kwargs):
        if not isinstance(fp, (str, Path)):
            return save(self, fp, *args, **kwargs)
        Path(fp).write_bytes(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    code, err = run_any(capsys, "generate", "a cat", "--model", sd1, *FAST, "-o", tmp_path / "out" / "x.png")
    assert code == 1 and "no space left" in err
    assert list((tmp_path / "out").iterdir()) == []


def test_unreadable_models_home_is_one_line(capsys, tmp_path, monkeypatch):
    from sfumato.models import catalog

    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.setenv("SFUMATO_HOME", str(home))
    code, _ = run_any(capsys, "models")
    assert code == 0  # a home that is not a folder holds no models
    capsys.readouterr()

    def unreadable():
        raise PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "models"))

    monkeypatch.setattr(catalog, "list_models", unreadable)
    code, err = run_any(capsys, "models")
    assert code == 1 and err.strip() == f"sfumato: error: cannot read or write {tmp_path / 'models'}: Permission denied"


def test_internal_errors_are_one_line_with_a_debug_switch(capsys, monkeypatch):
    from sfumato.cli import models

    monkeypatch.setattr(models, "cmd_models", lambda args: [][1])
    code, err = run_any(capsys, "models")
    assert code == 1 and "internal error (IndexError" in err and "SFUMATO_DEBUG=1" in err
    monkeypatch.setenv("SFUMATO_DEBUG", "1")
    main(["models"])
    assert "Traceback" in capsys.readouterr().err


def test_missing_package_names_the_pip_install(capsys, monkeypatch):
    from sfumato.cli import models

    def needs_cv2(args):
        raise ModuleNotFoundError("No module named 'cv2'", name="cv2")

    monkeypatch.setattr(models, "cmd_models", needs_cv2)
    code, err = run_any(capsys, "models")
    assert code == 1 and "pip install opencv-python-headless" in err


def test_text_encoder_smaller_than_its_tokenizer_is_refused(tmp_path, sd1):
    """A text encoder with fewer token embeddings than the tokenizer's ids fails at load, in one line."""
    import shutil

    import safetensors.torch as st

    from sfumato.engine import Engine
    from sfumato.errors import UnsupportedModel

    model = tmp_path / "mismatch"
    shutil.copytree(sd1, model)
    config_path = model / "text_encoder" / "config.json"
    config = json.loads(config_path.read_text())
    config["vocab_size"] = 1000
    config_path.write_text(json.dumps(config))
    weights = next((model / "text_encoder").glob("*.safetensors"))
    state = st.load_file(str(weights))
    key = next(k for k in state if "token_embedding" in k)
    state[key] = state[key][:1000].clone()
    st.save_file(state, str(weights))
    with pytest.raises(UnsupportedModel, match="1000 token embeddings but its tokenizer has 49408"):
        Engine(model).load()


@pytest.mark.slow
def test_ctrl_c_mid_generation_exits_130_with_no_partial_output(tmp_path, sd1, spawn):
    """SIGINT during a long generation: one line, exit 130, no file left in the output folder."""
    out = tmp_path / "out"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = spawn([sys.executable, "-m", "sfumato.cli", "generate", "a cat", "--model", str(sd1), "--steps", "150",
                     "-W", "256", "-H", "256", "--batch-count", "20", "-o", str(out)],
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not out.exists():  # the output folder is checked (created) before the work
        time.sleep(0.2)
    time.sleep(2.0)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    assert process.returncode == 130 and "Traceback" not in err, err
    assert "interrupted" in err
    assert list(out.iterdir()) == []
