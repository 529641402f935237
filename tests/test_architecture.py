"""The shape of the package: imports go one way, down the stages of docs/architecture.md.

The import graph is read from the source (every ``import`` statement, those inside
functions included: an import deferred into a function still ties the two modules
together, it only hides a circle), so these tests need nothing imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "patchcli"

#: The stages from the bottom up (docs/architecture.md): a module imports only modules of
#: its own stage or of stages below it. Keys are module names or package prefixes; the
#: longest match decides.
STAGES: dict[str, int] = {
    # 0. foundation: no patchcli imports above it
    "patchcli._version": 0,
    "patchcli.errors": 0,
    "patchcli.units": 0,
    "patchcli.progress": 0,
    "patchcli.signals": 0,
    "patchcli.workers": 0,
    "patchcli.shards": 0,
    "patchcli.names": 0,
    "patchcli.sampling": 0,
    # 1. the hand-over between the subject's work and the writers
    "patchcli.handover": 1,
    # 2. reading and writing files
    "patchcli.io": 2,
    # 3. the inputs: config, manifests and subjects, what identifies a run, and the
    #    preprocessing transforms (checked by the config, run by the subject's work)
    "patchcli.transforms": 3,
    "patchcli.config": 3,
    "patchcli.subjects": 3,
    "patchcli.fingerprint": 3,
    "patchcli.layouts": 3,
    # 4. the subject's work (what a worker runs)
    "patchcli.subject_work": 4,
    # 5. the pipeline of workers, and planning
    "patchcli.pipeline": 5,
    "patchcli.plan": 5,
    # 6. the run
    "patchcli.extract": 6,
    "patchcli.dryrun": 6,
    # 7. tools over runs and outputs
    "patchcli.merge": 7,
    "patchcli.info": 7,
    "patchcli.cluster": 7,
    "patchcli.repair": 7,
    "patchcli.preview": 7,
    "patchcli.aggregate": 7,
    "patchcli.memory": 7,
    "patchcli.queue": 7,
    "patchcli.sizing": 7,
    "patchcli.phantom": 7,
    # 7. the torch reader and its companions
    "patchcli.dataset": 7,
    "patchcli.batching": 7,
    "patchcli.dataloader": 7,
    "patchcli.patch_tables": 7,
    "patchcli.augment": 7,
    "patchcli.torchio_input": 7,
    "patchcli.volume_dataset": 7,
    # 8. the command line
    "patchcli.cli": 8,
    # 9. the package's entry points
    "patchcli": 9,
    "patchcli.__main__": 9,
}

#: Where imports of patchcli's own modules may wait inside functions: the command line,
#: so that ``patchcli --help`` loads no numpy, h5py or nibabel; the package root, so
#: that ``import patchcli`` loads no torch.
DEFERRED_IMPORTS_ALLOWED = ("patchcli.cli", "patchcli")

#: No module is longer than this; past it a module holds two concerns.
MAX_MODULE_LINES = 700


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(imported patchcli module, line, inside a function)`` for each import of ``name``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            deferred = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name in MODULES:
                        found.append((alias.name, child.lineno, in_function))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if not target.startswith("patchcli"):
                    continue
                for alias in child.names:
                    submodule = f"{target}.{alias.name}"
                    module = submodule if submodule in MODULES else target
                    if module in MODULES:
                        found.append((module, child.lineno, in_function))
            visit(child, deferred)

    visit(tree, False)
    return [entry for entry in found if entry[0] != name]


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _stage(name: str) -> int | None:
    matches = [key for key in STAGES if name == key or name.startswith(key + ".")]
    return STAGES[max(matches, key=len)] if matches else None


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph[node]):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                other = stack.pop()
                on_stack.discard(other)
                component.append(other)
                if other == node:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return components


def test_the_graph_is_read():
    # A reader that found no imports would pass every test below.
    edges = {
        name: {(module, inside) for module, _, inside in imports} for name, imports in GRAPH.items()
    }
    assert ("patchcli.handover", False) in edges["patchcli.io.hdf5"]
    assert ("patchcli.subject_work", False) in edges["patchcli.pipeline"]
    assert ("patchcli.extract", True) in edges["patchcli.cli.extract"]
    assert ("patchcli.dataset", True) in edges["patchcli"]


def test_no_import_circles():
    graph = {name: {module for module, _, _ in imports} for name, imports in GRAPH.items()}
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_deferred_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_every_module_has_a_stage():
    missing = sorted(name for name in MODULES if _stage(name) is None)
    assert missing == [], "add these to STAGES here and to docs/architecture.md"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_down_the_stages(name):
    stage = _stage(name)
    upward = [
        f"line {line}: {module} (stage {_stage(module)})"
        for module, line, _ in GRAPH[name]
        if _stage(module) is not None and stage is not None and _stage(module) > stage
    ]
    assert upward == [], f"{name} (stage {stage}) imports from above"


def test_io_imports_only_io_the_hand_over_and_the_foundation():
    allowed_stages = {0, 1, 2}
    upward = [
        (name, module, line)
        for name, imports in GRAPH.items()
        if name.startswith("patchcli.io")
        for module, line, _ in imports
        if _stage(module) not in allowed_stages
    ]
    assert upward == []


def test_patchcli_modules_are_imported_at_the_top_of_library_modules():
    def allowed(name: str) -> bool:
        return any(
            name == prefix or (prefix != "patchcli" and name.startswith(prefix + "."))
            for prefix in DEFERRED_IMPORTS_ALLOWED
        )

    deferred = [
        (name, module, line)
        for name, imports in GRAPH.items()
        if not allowed(name)
        for module, line, inside in imports
        if inside
    ]
    assert deferred == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_hold_one_concern(name):
    lines = len(MODULES[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_MODULE_LINES, f"{MODULES[name]}: {lines} lines"
