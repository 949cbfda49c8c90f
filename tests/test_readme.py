"""The README is the user's manual: every command is documented, the sections are all there (a scripted edit once
cut it in half without any other test noticing), and the licences table closes it."""

from __future__ import annotations

import re
from pathlib import Path

from sfumato.cli import build_parser

README = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")


def test_every_command_is_documented():
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    missing = [name for name in commands if f"sfumato {name}" not in README]
    assert not missing, missing


def test_sections_are_all_there_and_the_licences_close_it():
    sections = re.findall(r"^## (.+)$", README, re.M)
    for needed in ("Commands", "Python API", "Control and editing", "Model tools", "Speed", "Memory and formats",
                   "Animation", "Training", "Evaluation", "Serving", "Web UI", "Safety", "Layout"):
        assert needed in sections, needed
    assert any(s.startswith("Scale-out") for s in sections)
    assert sections[-1] == "Shipped assets and licences"
    assert README.rstrip().endswith("sfumato itself is Apache-2.0.")
