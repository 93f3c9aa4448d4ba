"""The import graph of ``src/seamfree`` follows the documented layering (README, "Design").

Every import between seamfree's subpackages must point to a lower layer: never upward, never sideways between
the subpackages of one layer. Imports inside ``if TYPE_CHECKING:`` blocks are annotations only and are exempt.
Within ``tiling``, the rooms of the prediction engine follow the data flow too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "seamfree"

# Layer of every top-level unit (a subpackage or a module of seamfree); higher layers may import lower ones.
LAYERS = {
    "_version": 0, "_lazy": 0, "errors": 0, "allocator": 0,
    "config": 1, "metrics": 1,
    "layers": 2,
    "models": 3,
    "io": 4,
    "tiling": 5, "data": 5,
    "diagnostics": 6, "training": 6, "distributed": 6, "segment": 6,
    "study": 7, "fix": 7,
    "testing": 1,
    "cli": 9, "napari": 9,
}

# Modules of seamfree.tiling in the order of the engine's data flow (later ones may import earlier ones).
TILING_ORDER = ["specs", "stitching", "device", "grid", "shards", "normalize", "blend", "engine", "memory",
                "throughput", "suggest", "near_exact", "options",
                "plan", "sinks", "sharded", "predict", "receptive", "allocator", "__init__"]

HEAVY_OPTIONAL = ("dask", "distributed", "zarr", "tifffile", "h5py", "matplotlib", "monai", "bioimageio", "napari",
                  "ome_zarr_models",
                  "skimage", "scipy", "imageio")

# Modules that napari itself loads (through the plugin manifest) and that are the only place Qt may be imported.
QT_MODULES = {Path("napari/widgets.py"), Path("napari/fix_widget.py"), Path("napari/panel.py"), Path("napari/seams.py")}
QT_LIBRARIES = ("napari", "magicgui", "qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "superqt", "vispy")


def _unit(path: Path) -> str:
    parts = path.relative_to(SOURCE).with_suffix("").parts
    return parts[0]


def _runtime_imports(tree: ast.Module) -> list[tuple[str, int, bool]]:
    """Return ``(module, line, at_top_level)`` of every import not under ``if TYPE_CHECKING:``."""
    found: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, top) for alias in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                found.extend([(child.module, child.lineno, top)] +
                             [(f"{child.module}.{alias.name}", child.lineno, top) for alias in child.names])
            nested = top and not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            visit(child, nested)

    visit(tree, True)
    return found


def _modules() -> list[tuple[Path, list[tuple[str, int, bool]]]]:
    return [(path, _runtime_imports(ast.parse(path.read_text()))) for path in sorted(SOURCE.rglob("*.py"))]


def test_every_unit_has_a_layer():
    units = {_unit(path) for path in SOURCE.rglob("*.py")} - {"__init__"}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS and to the README's Design section"


def test_imports_point_only_downward():
    violations = []
    for path, imports in _modules():
        unit = _unit(path)
        if unit == "__init__":
            continue  # the package root re-exports the public verbs lazily (no runtime imports of subpackages)
        for module, line, _ in imports:
            parts = module.split(".")
            if parts[0] != "seamfree" or len(parts) < 2 or parts[1] == unit:
                continue
            target = parts[1]
            if target not in LAYERS:
                continue  # "from seamfree import x" names re-exported objects; checked below
            if LAYERS[target] >= LAYERS[unit]:
                violations.append(f"{path.relative_to(SOURCE)}:{line} ({unit}, layer {LAYERS[unit]}) imports "
                                  f"{module} ({target}, layer {LAYERS[target]})")
    assert not violations, "\n".join(violations)


def test_nothing_imports_the_package_root_cli_or_napari():
    violations = []
    for path, imports in _modules():
        unit = _unit(path)
        for module, line, _ in imports:
            if module == "seamfree" or (module.startswith("seamfree.") and module.split(".")[1] in
                                        set(_root_exports())):
                violations.append(f"{path.relative_to(SOURCE)}:{line} imports the package root ({module})")
            if unit not in ("cli", "napari") and module.split(".")[:2] in (["seamfree", "cli"], ["seamfree", "napari"]):
                violations.append(f"{path.relative_to(SOURCE)}:{line} imports {module}")
    assert not violations, "\n".join(violations)


def _root_exports() -> list[str]:
    tree = ast.parse((SOURCE / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            return [ast.literal_eval(element) for element in node.value.elts]  # type: ignore[attr-defined]
    raise AssertionError("seamfree/__init__.py has no __all__")


def test_the_engine_rooms_follow_the_data_flow():
    violations = []
    for path in sorted((SOURCE / "tiling").glob("*.py")):
        name = path.stem
        assert name in TILING_ORDER, f"add tiling/{path.name} to TILING_ORDER"
        for module, line, _ in _runtime_imports(ast.parse(path.read_text())):
            parts = module.split(".")
            inside = parts[:2] == ["seamfree", "tiling"] and len(parts) > 2 and parts[2] in TILING_ORDER
            if inside and name != "__init__" and TILING_ORDER.index(parts[2]) >= TILING_ORDER.index(name):
                violations.append(f"tiling/{path.name}:{line} imports {module}")
    assert not violations, "\n".join(violations)


def test_heavy_optional_libraries_are_imported_inside_functions():
    violations = []
    for path, imports in _modules():
        for module, line, top in imports:
            exempt = path.relative_to(SOURCE) in QT_MODULES and module.split(".")[0] in QT_LIBRARIES
            if top and module.split(".")[0] in HEAVY_OPTIONAL and not exempt:
                violations.append(f"{path.relative_to(SOURCE)}:{line} imports {module} at module level")
    assert not violations, "\n".join(violations)


def test_qt_is_imported_only_by_the_napari_widgets():
    violations = []
    for path, imports in _modules():
        for module, line, _ in imports:
            if module.split(".")[0] in QT_LIBRARIES and path.relative_to(SOURCE) not in QT_MODULES:
                violations.append(f"{path.relative_to(SOURCE)}:{line} imports {module}")
    assert not violations, "\n".join(violations)


def test_the_napari_reader_and_layer_builders_load_without_qt_or_torch():
    code = ("import sys\nimport seamfree.napari.reader, seamfree.napari.layers\n"
            "loaded = sorted(name for name in sys.modules if name.split('.')[0] in "
            f"{(*QT_LIBRARIES, 'torch')!r})\nassert not loaded, loaded\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["predict", "--help"]])
def test_the_cli_answers_help_and_version_without_importing_torch(argv):
    code = (f"import sys\nfrom seamfree.cli.main import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "seamfree" in result.stdout


def test_one_torch_free_halo_parser_for_the_cli_and_the_library():
    # --halo is checked before any model loads, by the parser the library validates with
    code = ("import sys, argparse\nfrom seamfree.cli.options import halo_value\n"
            "assert halo_value('8,32,32') == (8, 32, 32) and halo_value('effective:1e-2') == 'effective:1e-2'\n"
            "try:\n    halo_value('effective:2')\nexcept argparse.ArgumentTypeError as exc:\n"
            "    assert '0 < TOL < 1' in str(exc), exc\nelse:\n    raise AssertionError('accepted effective:2')\n"
            "assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    from seamfree.tiling import near_exact, specs

    assert near_exact.effective_tolerance is specs.effective_tolerance


def _imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_cycle_inside_models_and_the_engine_does_not_import_the_plan():
    models = {p.stem: _imports_of(p) for p in (SOURCE / "models").glob("*.py")}
    edges = {(a, b.rsplit(".", 1)[-1]) for a, found in models.items() for b in found
             if b.startswith("seamfree.models.") and b.rsplit(".", 1)[-1] in models}
    cycles = sorted((a, b) for a, b in edges if (b, a) in edges)
    assert not cycles, f"modules of seamfree.models importing each other: {cycles}"
    assert "seamfree.tiling.plan" not in _imports_of(SOURCE / "tiling" / "engine.py")


def test_lazy_packages_give_functions_not_submodules():
    code = ("import seamfree.tiling.predict, seamfree.diagnostics.diagnose\n"
            "from seamfree.tiling import predict\nfrom seamfree.diagnostics import diagnose\n"
            "assert callable(predict) and callable(diagnose), (predict, diagnose)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
