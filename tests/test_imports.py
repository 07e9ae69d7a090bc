"""The import graph of reasonax (read with ast, nothing imported): no cycles, and every import in
the direction docs/ARCHITECTURE.md documents:

    jsonl, cli, typed, tasks  <-  eval  <-  model  <-  sample  <-  train  <-  pipeline, evaluate

Every import statement counts, at module level or inside a function. `from a.b import c` is an
edge to the module a.b.c when there is one, else to a.b; a package's __init__ is the node of
its own name (importing a.b.c also runs a.b's __init__, but that is Python's business: a cycle
through it is real only when a module names the package)."""

import ast
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "reasonax"

# layer of each top-level part of reasonax: a module may import its own layer and lower ones
LAYERS = {"jsonl": 0, "cli": 0, "typed": 0, "tasks": 0, "eval": 1, "model": 2, "sample": 3, "train": 4,
          "pipeline": 5, "pipeline_report": 5, "evaluate": 5, "": 5}


def modules() -> dict[str, Path]:
    out = {}
    for p in ROOT.rglob("*.py"):
        parts = p.relative_to(ROOT.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    edges: dict[str, set[str]] = {m: set() for m in mods}
    for name, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path}:{node.lineno}: relative import"
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in mods else node.module
                           for a in node.names]
            edges[name].update(t for t in targets if t in mods and t != name)
    return edges


def layer(module: str) -> int:
    parts = module.split(".")[1:]
    return LAYERS[parts[0] if parts else ""]


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(m):
        state[m] = 1
        stack.append(m)
        for n in sorted(edges[m]):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state and (found := visit(n)):
                return found
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(edges):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_the_graph_sees_every_kind_of_import():
    """The reader itself: module-level, function-local and from-imports of modules and of names."""
    edges = graph()
    assert "reasonax.train.grpo.objective" in edges["reasonax.train.grpo.rollout"]  # from m import name
    assert "reasonax.train.grpo.rollout" in edges["reasonax.train.grpo.recipe"]      # from pkg import module
    assert "reasonax.model.config" in edges["reasonax.model.transformer"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_imports_go_one_way():
    bad = sorted(f"{m} -> {n}" for m, ns in graph().items() for n in ns if layer(n) > layer(m))
    assert not bad, "imports against docs/ARCHITECTURE.md's direction:\n" + "\n".join(bad)


@pytest.mark.parametrize("package", ["reasonax.eval", "reasonax.tasks"])
def test_eval_and_tasks_import_no_jax(package):
    mods = modules()
    for name, path in mods.items():
        if name == package or name.startswith(package + "."):
            tree = ast.parse(path.read_text())
            names = itertools.chain.from_iterable(
                [a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""]
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)))
            assert not [x for x in names if x.split(".")[0] in ("jax", "flax", "optax", "orbax")], name


def test_every_cli_is_an_entry_point_and_runs_with_python_m():
    """[project.scripts] names a cli() of each CLI module, and `python -m` of that module (or of
    its package, through __main__.py) calls the same function."""
    import tomllib

    scripts = tomllib.loads((ROOT.parent / "pyproject.toml").read_text())["project"]["scripts"]
    mods = modules()
    mains = {m for m, p in mods.items() if "app.run(" in p.read_text()}  # every absl main
    targets = {}
    for name, target in scripts.items():
        module, func = target.split(":")
        assert name.startswith("reasonax-") and func == "cli", (name, target)
        tree = ast.parse(mods[module].read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "cli" for n in tree.body), target
        targets[module] = name
    assert mains <= set(targets), f"CLIs without an entry point: {sorted(mains - set(targets))}"
    for module in targets:
        package_main = module.rsplit(".", 1)[0] + ".__main__"
        runner = mods[package_main] if module.endswith(".recipe") else mods[module]
        text = runner.read_text()
        assert 'if __name__ == "__main__":\n    cli()' in text, runner


def test_no_package_name_is_shadowed_by_its_submodule():
    """A package that exports a name (function, class) with the name of one of its submodules
    loses it when that submodule is imported (Python sets the module as the package attribute):
    reasonax.sample.generate the function was once replaced by the generate CLI module so."""
    mods = modules()
    for pkg, path in mods.items():
        if path.name != "__init__.py":
            continue
        subs = {m.rsplit(".", 1)[1] for m in mods if m.startswith(pkg + ".") and m.count(".") == pkg.count(".") + 1}
        exported = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module != pkg:
                exported |= {a.asname or a.name for a in node.names
                             if f"{node.module}.{a.name}" not in mods}  # names, not submodules
            elif isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                exported.add(node.name)
        assert not exported & subs, f"{pkg} exports {sorted(exported & subs)}, also its submodules"
