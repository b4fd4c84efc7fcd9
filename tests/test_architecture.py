"""The layout holds (docs/architecture.md): imports point one way, no cycles, small files and
functions. Read from the source, so a change that breaks it fails here."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "imgcls"


def modules() -> dict[str, Path]:
    out = {}
    for f in SRC.rglob("*.py"):
        name = ".".join(f.relative_to(SRC.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = f
    return out


def imports() -> dict[str, set[str]]:
    """Every module's imports of other imgcls modules (function-level ones too)."""
    mods = modules()

    def known(name: str) -> str:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    edges: dict[str, set[str]] = {m: set() for m in mods}
    for m, f in mods.items():
        for node in ast.walk(ast.parse(f.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgcls"):
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names if a.name.startswith("imgcls")]
            for n in names:
                target = known(n)
                if target != m and not m.startswith(target + "."):  # a module's own package is no edge
                    edges[m].add(target)
    return edges


def test_no_import_cycles() -> None:
    edges = imports()
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(m: str, path: list[str]) -> bool:
        state[m] = 1
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                cycle.extend([*path[path.index(n) :], n] if n in path else [m, n])
                return True
            if n not in state and visit(n, [*path, n]):
                return True
        state[m] = 2
        return False

    for m in sorted(edges):
        if m not in state and visit(m, [m]):
            break
    assert not cycle, " -> ".join(cycle)


def test_imports_point_one_way() -> None:
    edges = imports()
    assert edges["imgcls.config"] <= {"imgcls.errors", "imgcls.io"}
    assert edges["imgcls.probability"] == set()
    inference = [m for m in edges if m.split(".")[1:2] in (["predict"], ["evaluate"], ["serve"], ["export"])]
    for m in inference:  # inference never imports the training engine
        assert not any(n.startswith("imgcls.engine") for n in edges[m]), m
    for m in edges:  # nothing imports the command line
        assert (
            m.startswith("imgcls.cli")
            or m == "imgcls.__main__"
            or not any(n.startswith("imgcls.cli") for n in edges[m])
        ), m


def test_files_and_functions_stay_small() -> None:
    for name, f in modules().items():
        text = f.read_text()
        assert len(text.splitlines()) <= 450, f"{name}: {len(text.splitlines())} lines"
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                table = name.startswith("imgcls.cli.") and node.name.startswith("add_")  # argument tables
                assert table or length <= 60, f"{name}.{node.name}: {length} lines"


def documented_ranks() -> list[set[str]]:
    """docs/architecture.md's "Direction of imports": the rooms from low to high, one rank per
    arrow (the backticked names between two arrows)."""
    import re

    text = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    section = text.split("## Direction of imports", 1)[1].split("\n## ", 1)[0]
    order = section.split("Low to high:", 1)[1].split(". Inference", 1)[0]
    return [set(re.findall(r"`([a-z_]+)`", part)) for part in order.split("→")]


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "imgcls"


def test_every_import_follows_the_documented_ranks() -> None:
    """Each room imports only rooms of its own rank or below it, and every room has a rank."""
    ranks = documented_ranks()
    rank = {name: k for k, names in enumerate(ranks) for name in names}
    unranked = {room(m) for m in modules()} - set(rank) - {"imgcls", "__main__", "_lazy"}
    assert not unranked, f"rooms missing from docs/architecture.md's ranks: {sorted(unranked)}"
    rank.update({"imgcls": len(ranks), "__main__": len(ranks), "_lazy": 0})
    wrong = [
        f"{m} (rank {rank[room(m)]}) imports {n} (rank {rank[room(n)]})"
        for m, targets in imports().items()
        for n in targets
        if rank[room(n)] > rank[room(m)]
    ]
    assert not wrong, "\n".join(sorted(wrong))
