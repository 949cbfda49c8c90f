"""Read the package's imports (module level, inside functions and under TYPE_CHECKING alike) and report import
cycles and imports that run back up a layer. Exit 1 when there is either; CI runs it.

    python scripts/check_imports.py [--graph]

The layers, from the ground up (a module may import its own layer and the layers below; the most specific prefix
decides a module's layer). See ../shared/STYLE.md and docs/architecture.md.
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "sfumato"
LAYERS = [  # (layer, module prefixes)
    (0, ["sfumato.errors", "sfumato.caching", "sfumato.version", "sfumato.limits", "sfumato.models.home", "sfumato.pipelines.images"]),
    (1, ["sfumato.sampling", "sfumato.memory", "sfumato.safety"]),
    (2, ["sfumato.models"]),
    (3, ["sfumato.prompts", "sfumato.speed", "sfumato.upscale", "sfumato.control"]),
    (4, ["sfumato.requests", "sfumato.models.catalog"]),
    (5, ["sfumato.pipelines", "sfumato.output"]),
    (6, ["sfumato.resolve"]),
    (7, ["sfumato.engine"]),
    (8, ["sfumato.evaluation", "sfumato.animation", "sfumato.training", "sfumato.portrait", "sfumato.views", "sfumato.comfy"]),
    (9, ["sfumato.server"]),
    (10, ["sfumato.scale"]),
    (11, ["sfumato.cli"]),
    (12, ["sfumato"]),  # the package face (`import sfumato`) re-exports from below
]


def layer_of(module: str) -> int:
    best, length = None, -1
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > length:
                best, length = layer, len(prefix)
    if best is None:
        raise SystemExit(f"{module} has no layer: add it to LAYERS in {Path(__file__).name}")
    return best


def modules() -> dict[str, Path]:
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports(path: Path, module: str, known: set[str]) -> set[str]:
    """The package modules `path` imports (a `from X import name` of a submodule counts as that submodule)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != module and name.startswith(PACKAGE):
                out.add(name)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, found, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter[0]
                    counter[0] += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", action="store_true", help="print every module's layer and imports")
    args = parser.parse_args()
    found = modules()
    graph = {name: imports(path, name, set(found)) for name, path in found.items()}
    upward = [(a, b, layer_of(a), layer_of(b)) for a, targets in graph.items() for b in sorted(targets)
              if layer_of(b) > layer_of(a) and a != PACKAGE and not (b != PACKAGE and a.startswith(b + "."))]
    loops = cycles(graph)
    if args.graph:
        for name in sorted(graph, key=lambda n: (layer_of(n), n)):
            print(f"{layer_of(name):2d} {name}: {', '.join(sorted(graph[name])) or '-'}")
    for component in loops:
        print("cycle: " + " <-> ".join(component))
    for a, b, la, lb in upward:
        print(f"upward: {a} (layer {la}) imports {b} (layer {lb})")
    largest = sorted(((len(p.read_text().splitlines()), n) for n, p in found.items()), reverse=True)[:5]
    print(f"{len(found)} modules, {len(loops)} cycles, {len(upward)} upward imports; largest: "
          + ", ".join(f"{n} ({lines})" for lines, n in largest))
    return 1 if loops or upward else 0


if __name__ == "__main__":
    sys.exit(main())
