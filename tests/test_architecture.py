"""The layers hold: no import cycles and no import that runs back up a layer (scripts/check_imports.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "check_imports.py"


def test_no_import_cycles_and_no_upward_imports():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ", 0 cycles, 0 upward imports;" in done.stdout


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import check_imports
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert check_imports.cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert check_imports.layer_of("sfumato.models.home") == 0 and check_imports.layer_of("sfumato.models.tiny") == 2
    assert check_imports.layer_of("sfumato.engine") > check_imports.layer_of("sfumato.pipelines.steps")


def test_the_parser_imports_no_torch():
    """`sfumato --help` and usage errors answer without importing torch (the commands import what they use)."""
    code = "import sys; from sfumato.cli import build_parser; build_parser(); print(sorted(m for m in sys.modules " \
           "if m.split('.')[0] in ('torch', 'diffusers', 'transformers')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout[-500:] + done.stderr[-500:]


@pytest.mark.parametrize("argv", [["models"], ["info", str(Path(__file__).resolve().parent.parent / "docs" / "scenes-samples.png")], ["generate"],
                                  ["generate", "a cat", "--steps", "many"], ["nonsense"], ["serve", "--help"]])
def test_listing_reading_and_usage_errors_import_no_torch(argv, tmp_path):
    """`sfumato models`, `sfumato info` and every usage error answer without torch/diffusers (instant start)."""
    code = ("import sys, json\nfrom sfumato.cli import main\ntry:\n    main(json.loads(sys.argv[1]))\n"
            "except SystemExit:\n    pass\nprint('LOADED', sorted(m for m in sys.modules "
            "if m.split('.')[0] in ('torch', 'diffusers', 'transformers')), file=sys.stderr)")
    done = subprocess.run([sys.executable, "-c", code, json.dumps(argv)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "SFUMATO_HOME": str(tmp_path)})
    assert "LOADED []" in done.stderr, done.stderr[-800:]
