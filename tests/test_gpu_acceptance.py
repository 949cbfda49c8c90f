"""The GPU acceptance script runs every part on tiny models on the CPU, so it never rots between GPU loans."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_acceptance.py"


@pytest.mark.slow
def test_every_part_runs_on_tiny_models_on_the_cpu(tmp_path):
    out = tmp_path / "acceptance.json"
    # speed-sdxl left out: with --tiny it runs speed-sd15's very command (the same tiny model and rows)
    parts = "samplers,speed-sd15,dpm-syncs,memory,server,lora-step,ray"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--tiny", "--parts", parts,
                           "--json", str(out)],
                          capture_output=True, text=True, timeout=900,
                          env={**os.environ, "SFUMATO_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"})
    report = json.loads(out.read_text())
    failed = {name: part for name, part in report["parts"].items() if not part["ok"]}
    assert not failed, json.dumps(failed)[:2000]
    assert done.returncode == 0 and report["device"] == "cpu" and report["tiny"] is True
    assert list(report["parts"]) == parts.split(",")
    assert report["parts"]["samplers"]["failures"] == [] and report["parts"]["samplers"]["runs"] >= 20
    assert report["parts"]["dpm-syncs"]["host_syncs"] is None  # counted on CUDA only
    assert "| samplers | yes |" in done.stdout


def test_an_unknown_part_is_a_usage_error():
    done = subprocess.run([sys.executable, str(SCRIPT), "--parts", "samplers,warp-drive"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and "unknown parts ['warp-drive']" in done.stderr
