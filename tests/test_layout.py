"""The package's layers and the old module paths."""

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import pinn_apts
from pinn_apts.training.checkpoints import canonical_class_path, settings_differences

PACKAGE = Path(pinn_apts.__file__).parent
#: layer -> what its files may import from the package and outside it
LAYERS = {"core": {"core"}, "pde": {"core", "pde"}, "training": {"core", "pde", "training"}}


def imports_of(path: Path) -> set[str]:
    """Absolute names of every module ``path`` imports (relative imports resolved)."""
    package = ("pinn_apts." + path.parent.relative_to(PACKAGE).as_posix().replace("/", ".")).rstrip(".")
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                names.add(f"{base}.{node.module}" if node.module else base)
            else:
                names.add(node.module)
    return names


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_only_the_layers_above_it(layer):
    for path in sorted((PACKAGE / layer).glob("*.py")):
        for name in imports_of(path):
            parts = name.split(".")
            if parts[0] == "pinn_apts":
                assert parts[1] in LAYERS[layer], f"{path.name} imports {name}"
            elif layer != "training":
                assert parts[0] != "lightning", f"{path.name} imports {name}: no Lightning below the glue"


@pytest.mark.parametrize("old, new", sorted(pinn_apts._MOVED.items()))
def test_old_module_paths_import_the_moved_modules(old, new):
    module = importlib.import_module(f"pinn_apts.{old}")
    assert module is importlib.import_module(f"pinn_apts.{new}")
    assert module.__spec__.name == f"pinn_apts.{new}"


def test_old_module_path_runs_with_python_m():
    result = subprocess.run([sys.executable, "-m", "pinn_apts.experiments", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "usage: experiments.py" in result.stdout, result.stderr


def test_every_public_name_is_importable_from_the_package():
    for name in pinn_apts.__all__:
        assert getattr(pinn_apts, name) is not None


def test_checkpoints_made_before_the_move_compare_equal():
    assert canonical_class_path("pinn_apts.problems.Heat") == "pinn_apts.Heat" == pinn_apts.Heat().spec()["class_path"]
    assert canonical_class_path("pinn_apts.modules.APTSPINN") == "pinn_apts.APTSPINN"
    assert canonical_class_path("no_such_module.Thing") == "no_such_module.Thing"
    old = {"problem": {"class_path": "pinn_apts.problems.Heat", "init_args": {"kappa": 0.4}}, "seed": 1}
    assert settings_differences("model", old, {"problem": pinn_apts.Heat(kappa=0.4).spec(), "seed": 1}) == []
    assert settings_differences("model", old, {"problem": pinn_apts.Heat(kappa=0.5).spec(), "seed": 1})
