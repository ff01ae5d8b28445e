"""The package's layers (relift_ray/__init__.py is the map): imports point down only, there
are no cycles, the three lowest layers import no Ray, and every import made inside a function
says why it is made there. The imports are read from the source (AST), not executed."""
import ast
import re
from pathlib import Path

import pytest

import relift_ray

ROOT = Path(relift_ray.__file__).resolve().parent
LAYERS = {"base": 1, "core": 2, "data": 3, "roles": 4, "runtime": 5, "entry": 6}
HEAVY = {"ray", "torch", "transformers", "vllm", "deepspeed", "mlflow", "matplotlib"}


def layer_of(module: str) -> int:
    """The layer of a module of the package, from where it lives."""
    parts = module.split(".")[1:]
    if not parts or len(parts) == 1 and parts[0] != "cli":
        return LAYERS["base"]  # relift_ray/*.py
    top = parts[0]
    if top in ("core", "data", "runtime"):
        return LAYERS[top]
    if top in ("rollout", "scheduler", "learner", "tracking"):
        return LAYERS["roles"]
    if top in ("jobs", "cli"):
        return LAYERS["entry"]
    raise AssertionError(f"{module}: in no layer (add its folder to the map and this test)")


def modules(root: Path = ROOT) -> dict[str, Path]:
    out = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = path
    return out


def imports(path: Path, name: str) -> list[tuple[str, int, bool, str]]:
    """(imported module, line, inside a function, the comment on that line or the one above)
    for every import statement of ``path`` (module ``name``), except those under
    ``if TYPE_CHECKING:``."""
    src = path.read_text()
    lines = src.splitlines()
    out = []

    def comment(lineno: int) -> str:
        here = lines[lineno - 1]
        above = lines[lineno - 2].strip() if lineno > 1 else ""
        return (here.split("#", 1)[1] if "#" in here else "") + \
            (above[1:] if above.startswith("#") else "")

    def visit(node, in_function: bool):
        why = ""  # a comment above a run of import statements speaks for the whole run
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            is_import = isinstance(child, (ast.Import, ast.ImportFrom))
            why = (comment(child.lineno) or why) if is_import else ""
            targets = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    pkg = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                    base = ".".join(pkg[:len(pkg) - child.level + 1] + ([base] if base else []))
                targets = [base]
                if base.startswith("relift_ray"):  # `from relift_ray.data import fetch`
                    targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base
                               for a in child.names]
            for t in targets:
                out.append((t, child.lineno, in_function, why))
            visit(child, inside)

    visit(ast.parse(src), False)
    return out


MODULES = modules()
EDGES = {name: imports(path, name) for name, path in MODULES.items()}


def internal(target: str) -> str | None:
    """The package module an import names (a module, or the package a name comes from)."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def test_every_module_is_in_a_layer():
    for name in MODULES:
        layer_of(name)


def test_imports_point_down_or_within_a_layer():
    upward = [f"{name} (layer {layer_of(name)}) imports {target} (layer {layer_of(mod)}) at "
              f"line {line}"
              for name, edges in EDGES.items() for target, line, _, _ in edges
              if (mod := internal(target)) and layer_of(mod) > layer_of(name)]
    assert upward == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_no_import_cycles_even_through_function_level_imports():
    graph = {name: {m for t, _, _, _ in edges if (m := internal(t)) and m != name
                    and not name.startswith(m + ".")}  # a package's own __init__ is no edge
             for name, edges in EDGES.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))
    # and the check finds one
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_base_core_and_data_import_no_ray():
    found = [f"{name}:{line} imports {target}" for name, edges in EDGES.items()
             if layer_of(name) <= LAYERS["data"]
             for target, line, _, _ in edges if target.split(".")[0] == "ray"]
    assert found == []


def test_nothing_outside_the_entry_points_imports_one():
    found = [f"{name}:{line} imports {target}" for name, edges in EDGES.items()
             if layer_of(name) < LAYERS["entry"]
             for target, line, _, _ in edges
             if (m := internal(target)) and layer_of(m) == LAYERS["entry"]]
    assert found == []


def test_function_level_imports_of_heavy_or_package_modules_say_why():
    """An import inside a function hides an edge; it is there only to keep a heavy or
    optional dependency (or a module that brings one) out of a process that does not need
    it, and a comment beside it says which."""
    silent = [f"{name}:{line} imports {target}" for name, edges in EDGES.items()
              for target, line, lazy, why in edges
              if lazy and not why.strip()
              and (target.split(".")[0] in HEAVY or internal(target))]
    assert silent == []


@pytest.mark.parametrize("folder", ["core", "data", "rollout", "scheduler", "learner",
                                    "tracking", "runtime", "jobs"])
def test_the_map_names_every_module_of_each_folder(folder):
    """relift_ray/__init__.py's map and each folder's docstring name its modules."""
    doc = relift_ray.__doc__ or ""
    folder_doc = ast.get_docstring(ast.parse((ROOT / folder / "__init__.py").read_text()))
    for path in sorted((ROOT / folder).glob("*.py")):
        if path.name == "__init__.py":
            continue
        assert re.search(rf"\b{path.stem}\b", folder_doc or ""), (folder, path.stem)
        assert re.search(rf"\b{path.stem}\b", doc), ("relift_ray/__init__.py", folder, path.stem)
    assert f"{folder}/" in doc


def test_the_map_names_every_base_module():
    doc = relift_ray.__doc__ or ""
    for path in sorted(ROOT.glob("*.py")):
        if path.name != "__init__.py":
            assert re.search(rf"\b{path.stem}\.py\b", doc), path.name


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The AST reading itself: an upward import inside a function, a Ray import in the data
    layer and an uncommented function-level import are all seen."""
    pkg = tmp_path / "relift_ray"
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "__init__.py").write_text("")
    (pkg / "data" / "bad.py").write_text(
        "def f():\n    import ray\n    from relift_ray.jobs import train\n")
    found = imports(pkg / "data" / "bad.py", "relift_ray.data.bad")
    assert [(t, lazy, why) for t, _, lazy, why in found] == [
        ("ray", True, ""), ("relift_ray.jobs.train", True, "")]
    assert layer_of("relift_ray.data.bad") == 3 and layer_of("relift_ray.jobs.train") == 6
