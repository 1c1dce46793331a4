"""Checks of a checkpoint against the run that resumes from it (no Lightning).

The modules and the data module compare what a checkpoint was made with against their own
settings and refuse a mismatch before training, naming both values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..pde.problems import canonical_class_path, class_path

__all__ = ["RESUME_HINT", "canonical_class_path", "class_path", "refuse_other_settings", "settings_differences"]

#: what a user can do about a refused checkpoint
RESUME_HINT = ("resume with the run's own configuration (pinn-apts fit --config <run folder>/config.yaml "
               "--ckpt_path ...), or start a new run")


def settings_differences(
    section: str, saved: Mapping[str, Any], current: Mapping[str, Any], skip: tuple[str, ...] = ()
) -> list[str]:
    """Lines ``"<section>.<key>: checkpoint <a>, this run <b>"`` for the keys both hold with other values.

    Private keys (``_...``) and ``skip`` are left out; tuples and lists compare equal, and so do two
    class paths of one class (a checkpoint made before the package's files moved names
    ``pinn_apts.pde.problems.Heat``, today's ``pinn_apts.Heat``).
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
    differ = settings_differences(section, saved, current, skip)
    if differ:
        raise ValueError(f"the checkpoint was made with other {what} than this run's; {RESUME_HINT}:\n  "
                         + "\n  ".join(differ))


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: canonical_class_path(v) if k == "class_path" and isinstance(v, str) else _plain(v)
                for k, v in value.items()}
    return value
