"""The package's shape: imports form a DAG (no cycle, none hidden inside a function), family facts live in
families.py only, and a built wheel carries what `random:<config>` and the demo need."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "vlmslim"


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    """{module: vlmslim modules it imports}, counting imports at every level (module, function, class)."""
    modules = {_module_name(p): p for p in PKG.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
                # `from pkg import sub` imports the submodule pkg.sub when one exists
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            deps |= {t for t in targets if t in modules and t != name}
        graph[name] = deps
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(n):
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (found := visit(d)):
                return found
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def _is_parent_package(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_import_graph_has_no_cycle():
    # A package __init__ re-exporting its own submodules is not a cycle of the design: drop package ->
    # own-submodule edges before looking for one.
    graph = {m: {d for d in deps if not _is_parent_package(m, d)} for m, deps in import_graph().items()}
    cycle = _cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


LAYERS = {  # lower layers never import higher ones: cli > recipes > steps > loading/checkpoint > families, io, errors
    "vlmslim.loading": ("vlmslim.pruning", "vlmslim.quantization", "vlmslim.benchmarks", "vlmslim.figures",
                        "vlmslim.cli", "vlmslim.checkpoint", "vlmslim.demo", "vlmslim.recipes"),
    "vlmslim.shapes": ("vlmslim.pruning", "vlmslim.quantization", "vlmslim.loading", "vlmslim.benchmarks"),
    "vlmslim.inputs": ("vlmslim.benchmarks", "vlmslim.pruning", "vlmslim.quantization"),
    "vlmslim.prompts": ("vlmslim.",),
    "vlmslim.families": ("vlmslim.loading", "vlmslim.pruning", "vlmslim.quantization", "vlmslim.benchmarks"),
    "vlmslim.pruning": ("vlmslim.quantization", "vlmslim.benchmarks", "vlmslim.figures", "vlmslim.cli",
                        "vlmslim.recipes"),
    "vlmslim.quantization": ("vlmslim.pruning", "vlmslim.benchmarks", "vlmslim.figures", "vlmslim.cli",
                             "vlmslim.recipes"),
    "vlmslim.recovery": ("vlmslim.pruning", "vlmslim.quantization", "vlmslim.benchmarks", "vlmslim.figures",
                         "vlmslim.cli", "vlmslim.demo", "vlmslim.recipes"),
    "vlmslim.benchmarks": ("vlmslim.figures", "vlmslim.cli", "vlmslim.recipes"),
    "vlmslim.figures": ("vlmslim.loading", "vlmslim.pruning", "vlmslim.quantization", "vlmslim.benchmarks.run",
                        "vlmslim.cli", "vlmslim.recipes"),
    "vlmslim.data": ("vlmslim.loading", "vlmslim.pruning", "vlmslim.quantization", "vlmslim.recovery",
                     "vlmslim.benchmarks", "vlmslim.figures", "vlmslim.cli", "vlmslim.recipes"),
    "vlmslim.demo": ("vlmslim.recipes", "vlmslim.cli"),
    "vlmslim.recipes": ("vlmslim.cli",),  # above every step, below the CLI
}


def test_no_arrow_runs_back_up():
    bad = [f"{m} -> {d}" for m, deps in import_graph().items() for d in deps
           for low, banned in LAYERS.items() if (m == low or m.startswith(low + "."))
           for b in banned if (d == b or d.startswith(b if b.endswith(".") else b + ".")) and not d.startswith(low)]
    assert not bad, "imports against the layering: " + ", ".join(sorted(bad))


def test_family_facts_live_in_families_only():
    offenders = []
    for path in PKG.rglob("*.py"):
        if path.name == "families.py":
            continue
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if "model_type ==" in line or "model_type in (" in line or "model_type not in" in line:
                offenders.append(f"{path.relative_to(PKG.parent)}:{i}")
    assert not offenders, "family branches outside families.py: " + ", ".join(offenders)


@pytest.mark.slow
def test_wheel_ships_configs_and_demo_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel, install it (no deps) into a target dir and run `inspect random:llava-1.5-7b` from a
    directory outside the checkout, with the checkout off sys.path."""
    src = tmp_path / "src"  # a copy: building in the checkout would leave build/ behind
    shutil.copytree(PKG, src / "vlmslim", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(PKG.parent / f, src / f)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path / "dist"), str(src)], check=True)
    wheel = next((tmp_path / "dist").glob("vlmslim-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "vlmslim/configs/models/llava-1.5-7b.json" in names
    assert "vlmslim/demo/model/model.safetensors" in names
    assert "vlmslim/recipes/demo.yaml" in names and "vlmslim/recipes/seed004-llava-vqaonline-grid.yaml" in names
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True)
    env = {**os.environ, "PYTHONPATH": str(target), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "vlmslim", "inspect", "random:llava-1.5-7b", "--json"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    info = json.loads(out.stdout)
    assert info["census"]["total_params"] == 7_063_427_072  # the public llava-hf/llava-1.5-7b-hf config
    where = subprocess.run([sys.executable, "-c", "import vlmslim; print(vlmslim.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True).stdout
    assert where.startswith(str(target))
