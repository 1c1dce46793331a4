"""Where a results file comes from: the commit, whether the tree was clean, and the environment.

On Burgers one rounding difference changes a run's final error several-fold, so a results file
is only as good as the record of the code and the machine that made it.  :func:`provenance`
gives that record; the experiment runner stores it in every file and refuses a tree with
uncommitted changes unless told (``--allow-dirty``).
"""

from __future__ import annotations

import hashlib
import io
import platform
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["SourceState", "check_source", "code_stamp", "export_commit", "provenance", "source_state"]

#: the checkout the package is imported from (an editable install); elsewhere git finds nothing
ROOT = Path(__file__).resolve().parents[2]

SourceState = dict[str, Any]


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30).stdout


def source_state() -> SourceState:
    """``{"commit": sha, "dirty": bool}`` of the package's git checkout; ``None`` for both when the
    package is not imported from a checkout (or git is missing).  ``dirty``: a tracked file differs
    from the commit (untracked files, such as new results files, do not count)."""
    try:
        commit = _git("rev-parse", "HEAD").strip()
        dirty = bool(_git("status", "--porcelain", "--untracked-files=no").strip())
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": dirty}


def export_commit(commit: str, dest: Path) -> Path:
    """The tree of ``commit`` of the package's checkout, written to ``dest`` (``git archive``), a plain
    folder and no checkout: run from there, its code knows no commit.

    ``ValueError`` naming the commit when the package is not imported from a checkout or the checkout
    lacks that commit (a shallow clone, another fork).
    """
    try:
        _git("cat-file", "-e", f"{commit}^{{commit}}")
    except (OSError, subprocess.SubprocessError):
        raise ValueError(f"commit {commit[:12]} is not in a git checkout here ({ROOT}): fetch it (a shallow clone "
                         "lacks it), or run the check from a checkout of that commit") from None
    dest.mkdir(parents=True, exist_ok=True)
    tar = subprocess.run(["git", "archive", "--format=tar", commit], cwd=ROOT, capture_output=True, check=True,
                         timeout=120).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as archive:
        archive.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest


def code_stamp() -> dict[str, Any]:
    """What tells two runs' code apart: the commit and, in a dirty tree, a digest of its
    uncommitted changes (``git diff HEAD``); the package's version outside a checkout."""
    state = source_state()
    if state["commit"] is None:
        from .. import __version__

        return {**state, "version": __version__}
    if state["dirty"]:
        state["diff"] = hashlib.sha256(_git("diff", "HEAD").encode()).hexdigest()
    return state


def check_source(state: SourceState, allow_dirty: bool) -> None:
    """Refuse to make results from code no commit holds, unless ``allow_dirty``."""
    if allow_dirty:
        return
    if state["commit"] is None:
        raise ValueError(
            f"cannot tell which commit the results would come from: {ROOT} is not a git checkout "
            "(or git is missing); run from a checkout, or pass --allow-dirty to record no commit"
        )
    if state["dirty"]:
        raise ValueError(
            f"the checkout has uncommitted changes (git status in {ROOT}): the results would name commit "
            f"{state['commit'][:12]} but come from other code; commit first, or pass --allow-dirty "
            "(the files then say dirty: true)"
        )


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def provenance(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The source state and the environment of a run on ``device``: versions, device, threads, CPU."""
    import lightning

    device = torch.device(device)
    return {
        **source_state(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "python": platform.python_version(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(),
        "cpu": _cpu_model(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
