"""The house drawn from the imports: data flows one way through the package's stages, so no
module imports a module of a later stage, the search never imports the paper protocol, and tasks
never import one another (only their shared ``tasks.common``)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "her2study"

# stage of each top-level module or subpackage, in the order data flows
STAGES = {
    "choices": 0,
    "errors": 0,
    "logs": 0,
    "digest": 0,
    "provenance": 0,
    "search_schema": 0,
    "config": 0,
    "privacy": 0,
    "filenames": 0,
    "folders": 0,
    "trusted_types": 0,
    "cohort": 1,
    "regions": 2,
    "split": 2,
    "features": 3,
    "fitcache": 3,  # content-addressed results cache (uses the features cache's atomic write)
    "selection": 4,
    "models": 5,
    "evaluation": 6,
    "study": 7,
    "results": 7,
    "search": 7,
    "tracking": 8,
    "model_artifact": 8,
    "reporting": 9,
    "report": 9,
    "preflight": 9,
    "tasks": 10,
    "__main__": 11,
    "__init__": 11,
}


def _edges():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            for target in targets:
                if target.startswith("her2study.") or target == "her2study":
                    yield module, target


def _stage(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    assert top in STAGES, f"{module}: give its package a stage in STAGES"
    return STAGES[top]


def test_no_module_imports_a_later_stage():
    upward = [
        f"{a} -> {b}"
        for a, b in _edges()
        if b != "her2study" and _stage(b) > _stage(a) and not a.endswith("__init__")
    ]
    assert upward == []


def test_search_never_imports_the_paper_protocol_and_tasks_never_import_tasks():
    bad = []
    for a, b in _edges():
        if a.startswith("her2study.search") and b.startswith(
            ("her2study.study", "her2study.results")
        ):
            bad.append(f"{a} -> {b}")
        if (
            a.startswith("her2study.tasks.")
            and b.startswith("her2study.tasks.")
            and b != "her2study.tasks.common"
            and a != b
        ):
            bad.append(f"{a} -> {b}")
    assert bad == []


def test_no_module_of_the_package_is_a_monolith():
    big = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 600
    }
    assert big == {}
