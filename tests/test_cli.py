"""The CLI adapter: outputs, metadata, replay, and every error path (one line, exit code 2)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from sfumato.cli import main
from sfumato.output import parse_infotext

FAST = ["--steps", "3", "-W", "32", "-H", "32", "--sampler", "Euler a"]


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_generate_writes_png_with_a1111_parameters(sd1, capsys, tmp_path):
    code, out, _ = run(capsys, "generate", "a (red:1.2) apple", "--model", sd1, *FAST, "--seed", 42,
                       "--negative", "blurry", "--batch-size", 2, "--json")
    assert code == 0
    data = json.loads(out)
    assert [image["seed"] for image in data["images"]] == [42, 43]
    first = data["images"][0]["path"]
    assert first.endswith("00000-42.png") and "outputs" in first
    params = parse_infotext(Image.open(first).text["parameters"])
    assert params["prompt"] == "a (red:1.2) apple" and params["Negative prompt"] == "blurry"
    assert (params["Steps"], params["Sampler"], params["Seed"], params["Size"]) == ("3", "Euler a", "42", "32x32")
    assert len(params["Model hash"]) == 10 and params["CFG scale"] == "7"


def test_default_outputs_never_overwrite(sd1, capsys):
    _, first, _ = run(capsys, "generate", "x", "--model", sd1, *FAST, "--seed", 1)
    _, second, _ = run(capsys, "generate", "x", "--model", sd1, *FAST, "--seed", 1)
    assert first.strip() != second.strip()
    assert first.strip().endswith("00000-1.png") and second.strip().endswith("00001-1.png")


def test_info_and_bit_exact_replay(sd1, capsys, tmp_path):
    run(capsys, "generate", "a red apple", "--model", sd1, *FAST, "--seed", 5, "--batch-size", 2,
        "--subseed", 9, "--subseed-strength", 0.2, "-o", tmp_path / "out.png")
    code, out, _ = run(capsys, "info", tmp_path / "out-1.png")
    assert code == 0 and "Seed: 6" in out and "Variation seed: 10" in out
    code, _, _ = run(capsys, "replay", tmp_path / "out-1.png", "-o", tmp_path / "again.png")
    assert code == 0
    original = np.asarray(Image.open(tmp_path / "out-1.png"))
    replayed = np.asarray(Image.open(tmp_path / "again.png"))
    assert (original == replayed).all()


def test_dry_run_prints_resolved_request(sd1, capsys):
    code, out, _ = run(capsys, "generate", "apple --ar 1:2 --no pear --seed 3", "--model", sd1, "--dry-run")
    request = json.loads(out)
    assert code == 0
    assert (request["width"], request["height"], request["seed"]) == (48, 88, 3)
    assert request["negative_prompt"] == "pear" and request["sampler"] == "DPM++ 2M Karras"


def test_generate_from_single_file_and_convert_back(sd1_single, capsys, tmp_path):
    code, _, _ = run(capsys, "generate", "x", "--model", sd1_single, *FAST, "-o", tmp_path / "a.png")
    assert code == 0
    code, out, _ = run(capsys, "convert", sd1_single, tmp_path / "folder")
    assert code == 0 and (tmp_path / "folder" / "model_index.json").exists()


def test_models_lists_home(sd1_single, capsys):
    import shutil

    from sfumato.models.home import checkpoints_dir

    checkpoints_dir().mkdir(parents=True)
    shutil.copy(sd1_single, checkpoints_dir() / "tiny.safetensors")
    code, out, _ = run(capsys, "models")
    assert code == 0 and "tiny" in out and "sd1" in out
    code, out, _ = run(capsys, "generate", "x", "--model", "tiny", *FAST)
    assert code == 0


def _ckpt(tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}}, path)
    return path


@pytest.mark.parametrize("argv,message", [
    (["generate", "x", "--model", "/nope"], "not found"),
    (["generate", "x", "--model", "{sd1}", "-W", "65"], "multiple of 8"),
    (["generate", "x", "--model", "{sd1}", "-W", "100000"], "between"),
    (["generate", "x", "--model", "{sd1}", "--sampler", "Magic"], "unknown sampler"),
    (["generate", "x --zoom 2", "--model", "{sd1}"], "unknown prompt flag --zoom"),
    (["generate", "x", "--model", "{ckpt}"], "sfumato convert"),
    (["generate", "x", "--model", "{sd1}", "--init-image", "/nope.png"], "does not exist"),
    (["generate", "x", "--model", "{sd1}", "--mask", "m.png"], "init image"),
    (["generate", "x", "--model", "{sd1}", "--lora", "/nope.safetensors:0.5"], "not found"),
    (["generate", "x", "--model", "{sd1}", "--steps", "abc"], "invalid int"),
    (["generate", "x", "--model", "{sd1}", "--outpaint", "left"], "SIDE=PIXELS"),
    (["generate", "x", "--model", "{sd1}", "-o", "{tmp}/out.jpg"], "must be a .png"),
    (["convert", "{ckpt}", "{tmp}/x.safetensors"], "--allow-pickle"),
    (["info", "/nope.png"], "does not exist"),
    (["replay", "{tmp}/plain.png", "-o", "{tmp}/r.png"], "no generation metadata"),
    (["generate"], "required"),
])
def test_errors_are_one_line_with_exit_code_2(argv, message, sd1, tmp_path, capsys):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    values = {"sd1": sd1, "ckpt": _ckpt(tmp_path), "tmp": tmp_path}
    argv = [a.format(**values) for a in argv]
    with pytest.raises(SystemExit) if argv == ["generate"] or "--steps" in argv or "--outpaint" in argv else _no_exit():
        code = main(argv)
        assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@pytest.mark.slow
def test_console_script_exit_code(tmp_path):
    """The installed entry point maps errors to exit 2 with no traceback."""
    done = subprocess.run([sys.executable, "-m", "sfumato.cli", "generate", "x", "--model", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.strip().startswith("sfumato: error:") and "Traceback" not in done.stderr
