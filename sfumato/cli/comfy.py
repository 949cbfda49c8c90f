"""Command-line adapter for `sfumato comfy`: run a ComfyUI API-format workflow offline, or list its nodes."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path
from typing import Any

from sfumato.cli.common import Bar, add_runtime_args, make_engine
from sfumato.errors import InvalidRequest

EXAMPLES = """examples:
  sfumato comfy run workflow_api.json
  sfumato comfy run workflow_api.json --set 3.seed=42 --set 6.text="a red apple" -o out/
  sfumato comfy run image.png                  (the workflow a ComfyUI PNG carries)
  sfumato comfy nodes"""


def add_parsers(commands) -> None:
    comfy = commands.add_parser("comfy", help="ComfyUI workflows: run an API-format workflow offline, list nodes",
                                epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = comfy.add_subparsers(dest="comfy_command", required=True)
    run = sub.add_parser("run", help="run an API-format workflow (JSON, or a ComfyUI PNG's `prompt`)")
    run.add_argument("workflow", type=Path)
    run.add_argument("--set", action="append", default=[], metavar="NODE.INPUT=VALUE",
                     help="change a node's input (VALUE is JSON when it parses, else text); repeatable")
    run.add_argument("--input-dir", type=Path, help="where LoadImage finds its images (default: the workflow's "
                                                    "folder)")
    run.add_argument("--output", "-o", type=Path, help="a folder (default: outputs/comfy/<time>/)")
    run.add_argument("--json", action="store_true")
    add_runtime_args(run)
    run.set_defaults(run=cmd_run)
    nodes = sub.add_parser("nodes", help="the ComfyUI nodes sfumato runs, with their inputs")
    nodes.set_defaults(run=cmd_nodes)


def load_workflow(path: Path) -> dict[str, Any]:
    """An API-format graph from a JSON file or a ComfyUI PNG; a UI-format workflow is refused with what to do."""
    from sfumato.comfy.png import comfy_prompt

    if not path.is_file():
        raise InvalidRequest(f"workflow {path} does not exist")
    if path.suffix.lower() == ".png":
        prompt = comfy_prompt(path)
        if prompt is None:
            raise InvalidRequest(f"{path} carries no ComfyUI `prompt` (API-format workflow)")
        return prompt
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidRequest(f"{path} is not JSON: {exc}") from None
    from sfumato.comfy.ui_format import is_ui_format, to_api

    if is_ui_format(data):
        return to_api(data)
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]  # a /prompt body
    if not isinstance(data, dict):
        raise InvalidRequest(f"{path} is not an API-format workflow (an object of nodes)")
    return data


def apply_sets(prompt: dict[str, Any], sets: list[str]) -> dict[str, Any]:
    for text in sets:
        target, sep, value = text.partition("=")
        node, dot, name = target.partition(".")
        if not sep or not dot or not name:
            raise InvalidRequest(f"--set expects NODE.INPUT=VALUE, got {text!r}")
        if node not in prompt:
            raise InvalidRequest(f"--set {text!r}: the workflow has no node {node!r}")
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = value
        prompt[node].setdefault("inputs", {})[name] = parsed
    return prompt


def cmd_run(args: argparse.Namespace) -> int:
    from sfumato.comfy.executor import Executor
    from sfumato.comfy.names import Names
    from sfumato.comfy.png import save_output
    from sfumato.output import check_writable

    prompt = apply_sets(load_workflow(args.workflow), args.set)
    folder = args.output or Path(os.environ.get("SFUMATO_OUTPUTS", "outputs")) / "comfy" / \
        time.strftime("%Y%m%d-%H%M%S")
    check_writable(folder)
    engine = make_engine(args)
    names = Names.from_home(args.input_dir or args.workflow.parent, allow_paths=True)
    bar = Bar()
    try:
        outputs, _ = Executor(engine, names).run(prompt, progress=bar)
    finally:
        bar.close()
    written = []
    for output in outputs:
        for k, image in enumerate(output.images.images):
            path = folder / f"{output.prefix}_{output.node_id}_{k:05d}_.png"
            save_output(path, image, output.images, k, {"prompt": prompt})
            written.append(str(path))
    if args.json:
        print(json.dumps({"images": written}, indent=2))
    else:
        print("\n".join(written))
    return 0


def cmd_nodes(args: argparse.Namespace) -> int:
    from sfumato.comfy.nodes import NODES

    for name, node in NODES.items():
        inputs = ", ".join(f"{k}: {v.type if not v.choices else 'COMBO'}" for k, v in node.inputs.items())
        print(f"{name}({inputs}) -> {', '.join(node.outputs) or 'output'}")
    return 0
