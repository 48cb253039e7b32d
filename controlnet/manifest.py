"""The sample manifest: what ``cn-sample`` made each image from, read back by ``cn-eval``.

``manifest.jsonl`` in a samples folder holds one JSON object per generated image: its file (relative
to the folder), the prompt, negative prompt, seed (of the generator that made its batch) and its
index in that batch, guidance scale, steps, base model, and one condition per ControlNet: the
ControlNet and its scale, and either the dataset row and column it came from or the condition
image written next to the samples, with the annotator (id and parameters) that made it, if known.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["MANIFEST_FILE", "ConditionRecord", "ManifestEntry", "ManifestError", "read_manifest", "write_manifest"]

MANIFEST_FILE = "manifest.jsonl"


class ManifestError(ValueError):
    """A manifest line that cannot be read, naming the file and line."""


@dataclass(frozen=True)
class ConditionRecord:
    controlnet: str
    scale: float
    annotator: str | None = None  # the annotator that made the condition, when known
    params: dict[str, Any] | None = None  # its output parameters (None: as the dataset's build.json says)
    column: str | None = None  # the dataset column the condition came from
    image: str | None = None  # the condition image written in the samples folder


@dataclass(frozen=True)
class ManifestEntry:
    sample: str
    prompt: str
    seed: int
    index: int  # position in the batch that the seed's generator made
    guidance: float
    steps: int
    base_model: str
    conditions: tuple[ConditionRecord, ...]
    negative_prompt: str = ""
    dataset: str | None = None
    split: str | None = None
    row: int | None = None
    file_name: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # other sampler settings (guess mode, control range)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ManifestEntry:
        values = dict(data)
        values["conditions"] = tuple(ConditionRecord(**c) for c in values.get("conditions", ()))
        return cls(**values)


def write_manifest(folder: Path, entries: list[ManifestEntry]) -> Path:
    path = folder / MANIFEST_FILE
    path.write_text("".join(entry.to_json() + "\n" for entry in entries), encoding="utf-8")
    return path


def read_manifest(folder: Path) -> list[ManifestEntry] | None:
    """The entries of ``folder``'s manifest, or None when it has none."""
    path = folder / MANIFEST_FILE
    if not path.is_file():
        return None
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entries.append(ManifestEntry.from_dict(json.loads(line)))
        except (ValueError, TypeError) as err:
            raise ManifestError(f"{path}:{number}: not a manifest entry ({err})") from None
    return entries
