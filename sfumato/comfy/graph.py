"""ComfyUI API-format workflows: `{node_id: {"class_type": ..., "inputs": {name: value | [node_id, output]}}}`.

`validate` checks a graph against the node table before anything is queued and reports as ComfyUI's `/prompt` does:
an `error` (type, message, details, extra_info) and `node_errors` (per node: its errors naming the input, the
output nodes that depend on it, its class). `order` is the topological order of the nodes an output needs.
"""

from __future__ import annotations

from pathlib import PurePath
from typing import Any

from sfumato.comfy.nodes import NODES, Node
from sfumato.errors import InvalidRequest

MAX_NODES = 500


class GraphError(InvalidRequest):
    """A graph that cannot run: carries ComfyUI's `{"error": ..., "node_errors": ...}` body."""

    def __init__(self, error: dict[str, Any], node_errors: dict[str, Any] | None = None):
        super().__init__(error["message"] + (f": {error['details']}" if error.get("details") else ""))
        self.body = {"error": error, "node_errors": node_errors or {}}


def _error(kind: str, message: str, details: str = "", **extra) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) \
        and isinstance(value[1], int) and not isinstance(value[1], bool)


def validate(prompt: Any, lists: dict[str, list[str]] | None = None) -> list[str]:
    """The output node ids to run; raises `GraphError` (ComfyUI's shapes) for a graph that cannot run. `lists`: the
    server's names for listed choices (checkpoints, loras, ...); a name not among them is `value_not_in_list`."""
    if not isinstance(prompt, dict) or not prompt:
        raise GraphError(_error("invalid_prompt", "Invalid prompt", "the prompt must be an object of nodes"))
    if len(prompt) > MAX_NODES:
        raise GraphError(_error("invalid_prompt", "Invalid prompt", f"at most {MAX_NODES} nodes, got {len(prompt)}"))
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            raise GraphError(_error("invalid_prompt", "Cannot execute because a node is missing the class_type "
                                    "property.", f"Node ID '#{node_id}'"))
        if node["class_type"] not in NODES:
            raise GraphError(_error("invalid_prompt", f"Cannot execute because node {node['class_type']} does not "
                                    "exist.", f"Node ID '#{node_id}'"))
        if not isinstance(node.get("inputs", {}), dict):
            raise GraphError(_error("invalid_prompt", "Invalid prompt", f"node {node_id}'s inputs must be an object"))
    outputs = [str(node_id) for node_id, node in prompt.items() if NODES[node["class_type"]].output]
    if not outputs:
        raise GraphError(_error("prompt_no_outputs", "Prompt has no outputs"))
    node_errors: dict[str, Any] = {}
    good = []
    for output in outputs:
        failed = {}
        for node_id in order(prompt, output):
            errors = _node_errors(prompt, node_id, lists)
            if errors:
                failed[node_id] = errors
        for node_id, errors in failed.items():
            entry = node_errors.setdefault(node_id, {"errors": errors, "dependent_outputs": [],
                                                     "class_type": prompt[node_id]["class_type"]})
            entry["dependent_outputs"].append(output)
        if not failed:
            good.append(output)
    if node_errors:
        first = next(iter(node_errors.values()))["errors"][0]
        raise GraphError(_error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                f"{first['message']}: {first['details']}"), node_errors)
    return good


def order(prompt: dict[str, Any], output: str) -> list[str]:
    """The nodes `output` needs, each after its inputs (depth first); a cycle or a link to a missing node is an
    error naming the node."""
    done: list[str] = []
    state: dict[str, str] = {}

    def visit(node_id: str, path: list[str]) -> None:
        if state.get(node_id) == "done":
            return
        if state.get(node_id) == "visiting":
            raise GraphError(_error("dependency_cycle_detected", "Dependency cycle detected",
                                    " -> ".join([*path, node_id])))
        state[node_id] = "visiting"
        for name, value in prompt[node_id].get("inputs", {}).items():
            if is_link(value):
                source = str(value[0])
                if source not in prompt:
                    raise GraphError(_error("prompt_outputs_failed_validation", "Prompt outputs failed validation",
                                            f"node {node_id} input {name} links to missing node {source}"),
                                     {node_id: {"errors": [_error("required_input_missing", "Required input is "
                                                                  "missing", f"{name} links to missing node {source}",
                                                                  input_name=name)],
                                                "dependent_outputs": [output],
                                                "class_type": prompt[node_id]["class_type"]}})
                visit(source, [*path, node_id])
        state[node_id] = "done"
        done.append(node_id)

    visit(output, [])
    return done


def _node_errors(prompt: dict[str, Any], node_id: str, lists: dict[str, list[str]] | None) -> list[dict[str, Any]]:
    """Each required input present; links pointing at an output of the right type; values of the right kind and
    in range; choices among the listed values."""
    node = prompt[node_id]
    spec: Node = NODES[node["class_type"]]
    inputs = node.get("inputs", {})
    errors = []
    for name, kind in spec.inputs.items():
        optional = name in spec.optional
        if name not in inputs:
            if not optional and kind.default is None:
                errors.append(_error("required_input_missing", "Required input is missing", name, input_name=name))
            continue
        value = inputs[name]
        if is_link(value):
            source = prompt[str(value[0])]
            outputs = NODES[source["class_type"]].outputs
            if value[1] >= len(outputs) or (outputs[value[1]] != kind.type and kind.type != "*"):
                got = outputs[value[1]] if value[1] < len(outputs) else "nothing"
                errors.append(_error("return_type_mismatch", "Return type mismatch between linked nodes",
                                     f"{name}, received_type({got}) mismatch input_type({kind.type})",
                                     input_name=name))
            continue
        problem = kind.check(value)
        if problem is None and kind.listed and lists is not None and not _listed(value, lists.get(kind.listed, [])):
            problem = ("value_not_in_list", "Value not in list", f"'{value}' not in the server's {kind.listed}")
        if problem:
            errors.append(_error(problem[0], problem[1], f"{name}: {problem[2]}", input_name=name,
                                 received_value=value if isinstance(value, (int, float, str)) else None))
    return errors


def _listed(value: str, names: list[str]) -> bool:
    """A listed name, with or without its file extension (workflows carry ComfyUI file names)."""
    return value in names or PurePath(value).stem in {PurePath(n).stem for n in names}
