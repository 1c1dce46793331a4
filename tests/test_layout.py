"""The package's layers and the old module paths."""

import ast
import importlib
import sys
from pathlib import Path

import pytest

import pinn_apts
from pinn_apts.training.checkpoints import (
    refuse_older_version,
    refuse_other_settings,
    settings_differences,
)

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


def test_the_modules_paths_before_the_subpackages_are_gone():
    """No import hook keeps pre-release paths alive (no sys.meta_path entry of the package's)."""
    for old in ("pinn_apts.problems", "pinn_apts.modules", "pinn_apts.experiments"):
        with pytest.raises(ModuleNotFoundError):
            importlib.import_module(old)
    assert not [finder for finder in sys.meta_path if type(finder).__module__.startswith("pinn_apts")]


def test_every_public_name_is_importable_from_the_package():
    for name in pinn_apts.__all__:
        assert getattr(pinn_apts, name) is not None


def test_a_checkpoint_naming_class_paths_of_an_older_version_is_refused_with_its_version():
    old = {"problem": {"class_path": "pinn_apts.problems.Heat", "init_args": {"kappa": 0.4}}, "seed": 1}
    with pytest.raises(ValueError, match=r"names pinn_apts.problems.Heat, .*written by an older pinn-apts \(before "
                                         r"2026-11-27, commit f5a4b78"):
        refuse_other_settings("model settings", "model", old, {"problem": pinn_apts.Heat(kappa=0.4).spec(), "seed": 1})
    refuse_older_version({"module": "pinn_apts.APTSPINN", "problem": {"class_path": "mymodule.Advection"}})
    with pytest.raises(ValueError, match="names pinn_apts.modules.APTSPINN"):
        refuse_older_version({"module": "pinn_apts.modules.APTSPINN"})
    new = {"problem": pinn_apts.Heat(kappa=0.4).spec(), "seed": 1}
    assert settings_differences("model", new, {"problem": pinn_apts.Heat(kappa=0.4).spec(), "seed": 1}) == []
    assert settings_differences("model", new, {"problem": pinn_apts.Heat(kappa=0.5).spec(), "seed": 1})
