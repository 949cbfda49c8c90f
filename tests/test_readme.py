"""The README is the front door and `docs/` the manual: every command is documented, every command the docs show
exists, the site builds strictly (broken links fail), and the licences table closes the README."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from sfumato.cli import build_parser

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")
DOCS = {path.name: path.read_text(encoding="utf-8") for path in sorted((ROOT / "docs").glob("*.md"))}
COMMANDS = next(a for a in build_parser()._actions if a.dest == "command").choices


def test_every_command_is_documented():
    text = README + "".join(DOCS.values())
    missing = [name for name in COMMANDS if f"sfumato {name}" not in text]
    assert not missing, missing


def _shown_commands(text: str) -> list[str]:
    """`sfumato WORD` as the docs show it: in code spans and in fenced code blocks."""
    shown = re.findall(r"`sfumato ([a-z][a-z-]*)", text)
    for block in re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, re.S):
        shown += re.findall(r"(?:^|&& |\| |\$ )sfumato ([a-z][a-z-]*)", block, re.M)
    return shown


def test_every_command_the_docs_show_exists():
    wrong = sorted({f"{name}: sfumato {word}" for name, text in [("README.md", README), *DOCS.items()]
                    for word in _shown_commands(text) if word not in COMMANDS})
    assert not wrong, wrong
    assert len(_shown_commands(README + "".join(DOCS.values()))) > 100  # the check reads the docs at all


def test_the_tour_commands_parse():
    for command in re.findall(r"\*\*[^*]+\*\*: `(sfumato [^`]+)`", README):
        args = shlex.split(command)[1:]
        build_parser().parse_args(args)  # exits (SystemExit) on an unknown flag


def test_readme_is_a_front_door_with_the_licences_last():
    assert len(README.splitlines()) <= 250
    assert README.startswith("# sfumato\n")
    sections = re.findall(r"^## (.+)$", README, re.M)
    assert sections[-1] == "Shipped assets and licences" and "Documentation" in sections
    assert README.rstrip().endswith("sfumato itself is Apache-2.0.")
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", README))
    assert linked >= set(DOCS) - {"index.md"}, set(DOCS) - linked  # every page reachable from the front door


def test_the_docs_site_builds_strictly(tmp_path):
    pytest.importorskip("mkdocs")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "security" / "index.html").is_file()


def test_the_readme_family_table_is_the_family_tables_output():
    from sfumato.pipelines.support import markdown_table

    assert markdown_table() in README  # regenerate with `sfumato families --markdown`
