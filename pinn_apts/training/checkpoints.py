"""Checks of a checkpoint against the run that resumes from it (no Lightning).

The modules and the data module compare what a checkpoint was made with against their own
settings and refuse a mismatch before training, naming both values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..pde.problems import class_path, import_class_path

__all__ = ["RESUME_HINT", "class_path", "refuse_older_version", "refuse_other_settings", "settings_differences"]

#: what a user can do about a refused checkpoint
RESUME_HINT = ("resume with the run's own configuration (pinn-apts fit --config <run folder>/config.yaml "
               "--ckpt_path ...), or start a new run")


def settings_differences(
    section: str, saved: Mapping[str, Any], current: Mapping[str, Any], skip: tuple[str, ...] = ()
) -> list[str]:
    """Lines ``"<section>.<key>: checkpoint <a>, this run <b>"`` for the keys both hold with other values.

    Private keys (``_...``) and ``skip`` are left out; tuples and lists compare equal.
    """
    return [
        f"{section}.{key}: checkpoint {saved[key]!r}, this run {current[key]!r}"
        for key in current
        if key in saved and not key.startswith("_") and key not in skip
        and _plain(saved[key]) != _plain(current[key])
    ]


def refuse_other_settings(
    what: str, section: str, saved: Mapping[str, Any], current: Mapping[str, Any], skip: tuple[str, ...] = ()
) -> None:
    """Raise ``ValueError`` listing :func:`settings_differences`, if there are any.

    ``what`` completes "the checkpoint was made with other ... than this run's".
    """
    refuse_older_version(saved)
    differ = settings_differences(section, saved, current, skip)
    if differ:
        raise ValueError(f"the checkpoint was made with other {what} than this run's; {RESUME_HINT}:\n  "
                         + "\n  ".join(differ))


def refuse_older_version(saved: Any) -> None:
    """Raise ``ValueError`` if ``saved`` (a checkpoint or a part of it) names a ``pinn_apts`` class path
    that does not import: such a checkpoint was written by an older pinn-apts (before 2026-11-27,
    commit f5a4b78, the modules lay in one folder: ``pinn_apts.problems``, ``pinn_apts.modules``),
    whose paths this version does not keep alive."""
    for path in _class_paths(saved):
        if path.startswith("pinn_apts."):
            try:
                import_class_path(path)
            except (ImportError, AttributeError, ValueError):
                raise ValueError(
                    f"the checkpoint names {path}, a class path this version of pinn-apts does not have: it was "
                    "written by an older pinn-apts (before 2026-11-27, commit f5a4b78, when the modules moved into "
                    "pinn_apts.core, .pde, .training and .paper); resume it with that version, or start a new run"
                ) from None


def _class_paths(value: Any) -> list[str]:
    if isinstance(value, Mapping):
        return [path for key, v in value.items()
                for path in ([v] if key in ("class_path", "_class_path", "module") and isinstance(v, str) else
                             _class_paths(v))]
    if isinstance(value, (list, tuple)):
        return [path for v in value for path in _class_paths(v)]
    return []


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value
