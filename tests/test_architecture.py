"""The layers hold: no import cycles and no import that runs back up a layer (scripts/check_imports.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
