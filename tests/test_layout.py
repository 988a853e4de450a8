"""The package's shape: no import cycles (between modules, or between subpackages), a CLI that starts light."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"
HEAVY = ("torch", "ray", "robustbench", "numba", "timm", "onnx", "matplotlib", "scipy")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(path: Path, known: set[str]) -> set[str]:
    """Every pipeline module ``path`` imports, at the top or inside a function (lazy imports count)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != "pipeline":  # the root package holds only __version__ and a lazy open_dataset
                out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imported(path, set(found)) - {name} for name, path in found.items() if name != "pipeline"}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of a directed graph as a path that returns to its start, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def subpackage(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_find_cycle_sees_a_cycle_and_its_absence() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_the_walk_sees_lazy_imports_inside_functions() -> None:
    graph = import_graph()
    assert "pipeline.build.ray_runner" in graph["pipeline.build.zoo_build"]  # imported inside build_zoo
    assert "pipeline.stats.report" in graph["pipeline.stats.run"]  # `from pipeline.stats import report`


def test_no_import_cycle_between_modules() -> None:
    assert find_cycle(import_graph()) is None


def test_no_import_cycle_between_subpackages() -> None:
    graph: dict[str, set[str]] = {}
    for module, targets in import_graph().items():
        graph.setdefault(subpackage(module), set()).update(subpackage(t) for t in targets)
    for node, targets in graph.items():
        targets.discard(node)
    assert find_cycle(graph) is None


def test_ray_is_imported_only_by_runners() -> None:
    users = {name for name, path in modules().items()
             if any(isinstance(n, (ast.Import, ast.ImportFrom)) and any(
                 (a.name if isinstance(n, ast.Import) else (n.module or "")).split(".")[0] == "ray" for a in n.names)
                 for n in ast.walk(ast.parse(path.read_text())))}
    assert users == {"pipeline.ray_cluster", "pipeline.build.ray_runner", "pipeline.build.job_submit",
                     "pipeline.train.ray_runner"}


def heavy_modules_after(argv: list[str], tmp_path: Path) -> list[str]:
    """Run the CLI in a fresh interpreter and list the heavy packages it imported."""
    code = (f"import sys, json\nfrom pipeline.cli.main import main\nsys.argv = ['filterlens', *{argv!r}]\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    return json.loads(proc.stderr.strip().splitlines()[-1])


@pytest.mark.parametrize("argv", [["--help"], ["sql", "--help"], ["build", "--help"], ["train", "--help"]])
def test_cli_help_imports_no_heavy_package(argv: list[str], tmp_path: Path) -> None:
    assert heavy_modules_after(argv, tmp_path) == []


def test_sql_info_and_zoo_list_import_no_heavy_package(tmp_path: Path) -> None:
    from pipeline.dataset.store import DatasetStore

    dataset_root = tmp_path / "ds"
    DatasetStore(str(dataset_root)).update_manifest()  # an empty dataset: views exist, queries run
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("name: z\nmodels:\n  - {id: a/b, source: a.pt}\n")
    assert heavy_modules_after(["sql", str(dataset_root), "SELECT count(*) FROM models"], tmp_path) == []
    assert heavy_modules_after(["info", str(dataset_root)], tmp_path) == []
    assert heavy_modules_after(["zoo", "list", str(zoo)], tmp_path) == []


# --- the base install: the query path works without any extra -------------------------------------
EXTRA_MODULES = ("torch", "torchvision", "timm", "onnx", "safetensors", "robustbench", "requests", "ray", "scipy",
                 "matplotlib", "numba", "s3fs", "datasets")
"""What `pip install filterlens` (no extras) does not install (pyproject.toml)."""


def run_without_extras(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """The CLI in a fresh interpreter where every optional package fails to import, as in a base install."""
    code = (f"import sys\nfor name in {EXTRA_MODULES!r}:\n    sys.modules[name] = None\n"
            f"from pipeline.cli.main import main\nsys.exit(main({argv!r}))")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_query_commands_work_with_the_base_install(tmp_path: Path) -> None:
    import numpy as np
    from stats_fixtures import write_model

    from pipeline.dataset.store import DatasetStore

    root = tmp_path / "ds"
    store = DatasetStore(str(root))
    write_model(store, "lab/a", "cifar10", [np.ones((4, 3, 3, 3)), np.ones((2, 4, 3, 3))], robust=True)
    store.update_manifest()
    sql = run_without_extras(["sql", str(root), "SELECT model_id, n_filters FROM models", "--format", "csv"], tmp_path)
    assert sql.returncode == 0, sql.stderr
    assert sql.stdout.splitlines() == ['"model_id","n_filters"', '"lab/a",20']
    info = run_without_extras(["info", str(root), "--json"], tmp_path)
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["filters"] == 20
    zoo = tmp_path / "zoo.yaml"
    zoo.write_text("name: z\nmodels:\n  - {id: a/b, source: a.pt}\n")
    listed = run_without_extras(["zoo", "list", str(zoo)], tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert "a/b" in listed.stdout


@pytest.mark.parametrize(("argv", "extra"), [
    (["extract", "m.pt", "--out", "ds"], "build"),
    (["stats", "ds", "--out", "report"], "stats"),
])
def test_a_command_without_its_extra_names_the_extra(argv: list[str], extra: str, tmp_path: Path) -> None:
    from pipeline.dataset.store import DatasetStore

    (tmp_path / "m.pt").write_bytes(b"not used")
    DatasetStore(str(tmp_path / "ds")).update_manifest()
    proc = run_without_extras(argv, tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert f"pip install 'filterlens[{extra}]'" in proc.stderr


def test_design_doc_lists_every_column_of_every_table() -> None:
    """docs/design.md's column tables match schemas/*.yaml exactly (names, in order)."""
    import re

    import yaml

    root = PACKAGE.parent
    text = (root / "docs" / "design.md").read_text()
    for table in ("models", "layers", "filters", "failures", "probes"):
        section = text.split(f"### `{table}`", 1)[1].split("\n### ", 1)[0].split("\n## ", 1)[0]
        documented = re.findall(r"^\| `([a-z0-9_]+)` \|", section, flags=re.M)
        declared = [c["name"] for c in yaml.safe_load((root / "schemas" / f"{table}.yaml").read_text())["columns"]]
        assert documented == declared, table


def test_architecture_doc_names_every_module_of_the_package() -> None:
    """docs/architecture.md's table has a row per subpackage naming each of its modules (the newcomer's map)."""
    import re

    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| `(\w+)/` \|(.*)$", text, flags=re.M)}
    rows[""] = next(line for line in text.splitlines() if line.startswith("| top level |"))
    unnamed = []
    for module in sorted(PACKAGE.rglob("*.py")):
        relative = module.relative_to(PACKAGE)
        if module.name in ("__init__.py", "__main__.py") or len(relative.parts) > 2:
            continue
        row = rows.get(relative.parts[0] if len(relative.parts) == 2 else "")
        if row is None or f"`{module.name}`" not in row and f"`{module.stem}." not in row:
            unnamed.append(str(relative))
    assert unnamed == []
