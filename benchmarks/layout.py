"""Measure the package's layout: top-level modules, long files and functions, imports inside
functions, and cycles in the module import graph.

    python benchmarks/layout.py            # prints the figures, writes benchmarks/results/layout.json
    python benchmarks/layout.py --check    # exit 1 when a figure is past its limit
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "bloodcell"
STAGES = ("core", "data", "networks", "training", "evaluation", "ood", "prediction", "packaging",
          "pipelines", "cli", "server", "cases", "fields", "adaptation")
# What each stage may import: data flows one way, sources -> audit/split -> cache -> train ->
# evaluate -> export -> predict/serve; cli and pipelines sit on top of everything, and adaptation is
# a small pipeline of its own (tune, calibrate, refit the out-of-distribution check, export).
ALLOWED = {
    "core": set(),
    "data": {"core"},
    "networks": {"core"},
    "ood": {"core", "networks", "data"},
    "prediction": {"core", "data", "networks", "ood"},
    "training": {"core", "data", "networks", "evaluation", "prediction"},
    "evaluation": {"core", "data", "networks", "ood", "prediction", "fields"},
    "packaging": {"core", "data", "networks", "ood", "training", "evaluation", "prediction"},
    "server": {"core", "data", "networks", "ood", "prediction", "packaging", "cases", "fields"},
    "pipelines": {"core", "data", "networks", "ood", "prediction", "training", "evaluation", "packaging"},
    "adaptation": {"core", "data", "networks", "ood", "prediction", "training", "evaluation", "packaging"},
    "cli": set(STAGES) - {"cli"},
    "cases": {"core", "data", "prediction"},
    "fields": {"core", "data", "networks", "ood", "prediction"},
}
LIMITS = {"top_level_modules": 6, "files_over_400_lines": 0, "functions_over_60_lines": 0, "import_cycles": 0,
          "layering_breaks": 0}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def module_imports(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> set[str]:
    """Modules of the package that ``module`` imports, at its top or inside its functions: a cycle
    held apart only by an import deferred into a function is still a cycle."""
    found = set()
    stack = [n for n in tree.body if not _type_checking(n)]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node, module, is_package)
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names}
        else:
            stack.extend(n for n in ast.iter_child_nodes(node) if not _type_checking(n))
    return {m for m in found if m in known and m != module}


def inner_imports(tree: ast.Module) -> list[int]:
    """Line numbers of import statements inside functions."""
    lines = []
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines += [n.lineno for n in ast.walk(fn) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return sorted(set(lines))


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def stage(module: str) -> str:
    """The stage package a module belongs to (``bloodcell.data.readers.folder`` -> ``data``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in STAGES) else "(top)"


def stage_imports(graph: dict[str, set[str]]) -> dict[str, list[str]]:
    """Which stage packages each stage package imports."""
    out: dict[str, set[str]] = {}
    for mod, targets in graph.items():
        out.setdefault(stage(mod), set()).update(stage(t) for t in targets if stage(t) != stage(mod))
    return {k: sorted(v) for k, v in sorted(out.items())}


def layering_breaks(uses: dict[str, list[str]]) -> list[str]:
    """Imports of a stage package that the allowed layering does not list."""
    return [f"{a} -> {b}" for a, targets in uses.items() for b in targets
            if a in ALLOWED and b not in ALLOWED[a] and b != "(top)"]


def measure() -> dict:
    files = sorted(PACKAGE.rglob("*.py"))
    trees = {module_name(f): (f, ast.parse(f.read_text(), str(f))) for f in files}
    known = set(trees)
    graph, long_files, long_functions, deferred = {}, [], [], {}
    for mod, (path, tree) in trees.items():
        rel = str(path.relative_to(ROOT))
        graph[mod] = module_imports(tree, mod, path.name == "__init__.py", known)
        n_lines = len(path.read_text().splitlines())
        if n_lines > 400:
            long_files.append({"file": rel, "lines": n_lines})
        for fn in ast.walk(tree):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = fn.end_lineno - fn.lineno + 1
                if length > 60:
                    long_functions.append({"function": f"{rel}:{fn.name}", "lines": length})
        if lines := inner_imports(tree):
            deferred[rel] = lines
    top = [f.name for f in PACKAGE.glob("*.py") if f.name not in ("__init__.py", "__main__.py")]
    found_cycles = cycles(graph)
    uses = stage_imports(graph)
    breaks = layering_breaks(uses)
    return {
        "stage_imports": uses, "layering_breaks": len(breaks), "breaks": breaks,
        "top_level_modules": len(top), "top_level": sorted(top),
        "files_over_400_lines": len(long_files), "long_files": long_files,
        "functions_over_60_lines": len(long_functions), "long_functions": long_functions,
        "import_cycles": len(found_cycles), "cycles": found_cycles,
        "imports_inside_functions": sum(len(v) for v in deferred.values()), "deferred_imports": deferred,
        "modules": len(trees), "import_edges": sum(len(v) for v in graph.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 when a figure is past its limit")
    parser.add_argument("-o", "--out", default=str(ROOT / "benchmarks" / "results" / "layout.json"))
    args = parser.parse_args(argv)
    figures = measure()
    for key, limit in LIMITS.items():
        print(f"{key:<26} {figures[key]:>4}   (limit {limit})")
    print(f"{'imports_inside_functions':<26} {figures['imports_inside_functions']:>4}   "
          f"({len(figures['deferred_imports'])} files)")
    print(f"{'modules / import edges':<26} {figures['modules']:>4} / {figures['import_edges']}")
    for item in figures["long_files"]:
        print(f"  long file      {item['file']} ({item['lines']})")
    for item in figures["long_functions"]:
        print(f"  long function  {item['function']} ({item['lines']})")
    for name, targets in figures["stage_imports"].items():
        print(f"  {name:<12} imports {', '.join(targets) or '-'}")
    for item in figures["breaks"]:
        print(f"  layering break {item}")
    for comp in figures["cycles"]:
        print(f"  cycle          {' <-> '.join(comp)}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(figures, indent=2))
    return int(args.check and any(figures[k] > v for k, v in LIMITS.items()))


if __name__ == "__main__":
    raise SystemExit(main())
