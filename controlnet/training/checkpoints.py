"""The run folder: its checkpoints, which one to resume from, and whether a new run may start in it."""

from __future__ import annotations

import shutil
from pathlib import Path

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "trainer_state.json"
CONFIG_FILE = "cn_train_config.json"
FINAL_FOLDER = "controlnet"
#: what a run writes, and ``--overwrite`` removes (caches stay: they check their own identity)
RUN_OUTPUTS = (FINAL_FOLDER, "unet", "validation", "logs", "samples.jsonl", CONFIG_FILE)


class RunFolderError(RuntimeError):
    """The output folder cannot take this run as asked."""


def checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    found = [p for p in output_dir.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :]))


def holds_run(output_dir: Path) -> bool:
    return bool(checkpoints(output_dir)) or any((output_dir / name).exists() for name in (FINAL_FOLDER, CONFIG_FILE))


def resume_dir(resume: str | None, output_dir: Path) -> Path | None:
    """The checkpoint to resume from: ``latest`` is the newest in ``output_dir`` (None when there is
    none yet, so one command both starts and continues a run), anything else a checkpoint folder."""
    if resume is None:
        return None
    if resume == "latest":
        found = checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise RunFolderError(f"{path} is not a cn-train checkpoint (no {STATE_FILE})")
    return path


def claim(output_dir: Path, resume: str | None, overwrite: bool, remove: bool = True) -> None:
    """Refuse to start a new run over an earlier one unless ``overwrite``, which removes the earlier
    run's outputs first when ``remove`` (the main process; the others only check).

    Resuming is a new run too when nothing is there to resume yet a finished run is: its final
    ControlNet would be silently replaced."""
    if not output_dir.is_dir() or not holds_run(output_dir):
        return
    if resume is not None and (resume != "latest" or checkpoints(output_dir) or not (output_dir / FINAL_FOLDER).exists()):
        return
    if not overwrite:
        hint = "--resume latest to continue it, " if checkpoints(output_dir) else ""
        raise RunFolderError(f"{output_dir} already holds a cn-train run: pass {hint}--overwrite to replace it, or another -o")
    if not remove:
        return
    for path in checkpoints(output_dir) + [output_dir / name for name in RUN_OUTPUTS]:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
