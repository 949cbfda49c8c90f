"""ComfyUI's UI-format workflows (what the editor saves: `nodes` with `widgets_values`, `links`) -> API format.

Each node's `widgets_values` fill its widget inputs in the node's input order (`comfy.nodes`), skipping the
`control_after_generate` value ComfyUI stores after a seed. Links become `[source node, output slot]`; a link from a
PrimitiveNode gives its value, a Reroute passes its own input on. Notes are dropped and muted nodes (mode 2) left
out. A node type sfumato does not run, a bypassed node (mode 4) or a subgraph is refused, naming it.
"""

from __future__ import annotations

from typing import Any

from sfumato.comfy.nodes import NODES
from sfumato.errors import InvalidRequest

DECORATIONS = ("Note", "MarkdownNote")
PASS_THROUGH = ("Reroute", "PrimitiveNode")
SEEDS = ("seed", "noise_seed")
WIDGET_TYPES = ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")


def is_ui_format(data: Any) -> bool:
    return isinstance(data, dict) and isinstance(data.get("nodes"), list) and "links" in data


def to_api(workflow: dict[str, Any]) -> dict[str, Any]:
    """The API-format graph of a UI-format workflow (core nodes only)."""
    nodes = {n["id"]: n for n in workflow.get("nodes", []) if isinstance(n, dict) and "id" in n}
    links = {link[0]: link for link in workflow.get("links", []) if isinstance(link, list) and len(link) >= 5}
    unknown = sorted({str(n.get("type")) for n in nodes.values()
                      if n.get("type") not in NODES and n.get("type") not in DECORATIONS + PASS_THROUGH
                      and n.get("mode", 0) != 2})
    if unknown:
        raise InvalidRequest(f"the workflow uses nodes sfumato does not run: {', '.join(unknown)} (see `sfumato comfy "
                             "nodes`; subgraphs show as ids)")

    def source(link_id: int) -> Any:
        """What a link carries: a literal (from a PrimitiveNode) or [node id, slot]."""
        seen = set()
        while True:
            if link_id not in links or link_id in seen:
                raise InvalidRequest(f"the workflow has a broken link {link_id}")
            seen.add(link_id)
            _, origin, slot = links[link_id][:3]
            node = nodes.get(origin)
            if node is None:
                raise InvalidRequest(f"link {link_id} comes from missing node {origin}")
            if node.get("type") == "PrimitiveNode":
                return ("value", (node.get("widgets_values") or [None])[0])
            if node.get("type") == "Reroute":
                link_id = next((i.get("link") for i in node.get("inputs", []) if i.get("link") is not None), None)
                continue
            return ("link", [str(origin), int(slot)])

    prompt: dict[str, Any] = {}
    for node_id, node in nodes.items():
        kind = node.get("type")
        if kind in DECORATIONS + PASS_THROUGH or node.get("mode", 0) == 2:
            continue
        if node.get("mode", 0) == 4:
            raise InvalidRequest(f"node {node_id} ({kind}) is bypassed; sfumato runs no bypassed nodes — remove or "
                                 "enable it")
        spec = NODES[kind]
        inputs: dict[str, Any] = {}
        values = list(node.get("widgets_values") or [])
        if isinstance(node.get("widgets_values"), dict):  # some nodes store widgets by name
            inputs.update(node["widgets_values"])
            values = []
        for name, item in spec.inputs.items():
            if item.type not in WIDGET_TYPES or not values:
                continue
            inputs[name] = values.pop(0)
            if name in SEEDS and values and values[0] in ("fixed", "increment", "decrement", "randomize"):
                values.pop(0)  # control_after_generate
        for slot in node.get("inputs", []) or []:
            if slot.get("link") is None:
                continue
            _, value = source(slot["link"])
            inputs[slot["name"]] = value
        prompt[str(node_id)] = {"class_type": kind, "inputs": inputs, "_meta": {"title": node.get("title", kind)}}
    return prompt
