"""Sharing a built dataset on the Hugging Face Hub.

Authentication is huggingface_hub's own: ``hf auth login`` or the ``HF_TOKEN`` environment
variable. The token is never read, printed or logged here.

Nothing local leaves the machine: a dataset whose files hold a local path (an absolute path, a file
name outside the input, the home folder or the dataset's own location, as an older cn-annotate
wrote in ``build.json`` and ``skipped.jsonl``) is refused. Before the upload, the card's usage
snippet is set to the repo id.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["HubError", "local_path_files", "push_dataset"]

#: the dataset's own text files, searched for local paths before a push
_TEXT_SUFFIXES = (".md", ".json", ".jsonl", ".txt", ".csv", ".yaml", ".yml")


class HubError(RuntimeError):
    """A push that failed, with a one-line reason that never contains the token."""


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item)


def _outside(name: str) -> bool:
    """An absolute path, or a relative one that climbs out of the input."""
    return os.path.isabs(name) or name.startswith("~") or ".." in name.replace("\\", "/").split("/")


def local_path_files(output: Path) -> list[str]:
    """The files of ``output`` that a push would upload and that hold a local path."""
    import pyarrow.parquet as pq

    from controlnet.dataset.layout import shard_paths

    places = {str(output.resolve().parent), str(Path.home())} - {"/", ""}
    # a place as a whole path or path prefix, not inside a word or a URL (/data vs huggingface.co/datasets)
    marker = re.compile("|".join(rf"(?<![\w.:/-]){re.escape(place)}(?![\w.-])" for place in sorted(places)))
    found = []
    for path in sorted(p for p in output.iterdir() if p.is_file() and not p.name.startswith(".")):
        if path.suffix not in _TEXT_SUFFIXES:
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        if places and marker.search(text):
            found.append(path.name)
        elif path.suffix in (".json", ".jsonl"):
            try:
                records = [json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl" else [json.loads(text)]
            except json.JSONDecodeError:
                continue
            if any(os.path.isabs(value) for record in records for value in _strings(record)):
                found.append(path.name)
    for shard in shard_paths(output):
        table = pq.read_table(shard, columns=["file_name", "image"])
        names = table.column("file_name").to_pylist() + [image["path"] for image in table.column("image").to_pylist() if image["path"]]
        if any(_outside(name) for name in names):
            found.append(f"data/{shard.name}")
    return found


def push_dataset(output: Path, repo_id: str, *, private: bool = False) -> str:
    """Upload the dataset folder ``output`` to the dataset repo ``repo_id``; returns its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
    )
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from controlnet.dataset.card import set_repo_id
    from controlnet.dataset.layout import BUILD_FILE, CARD_FILE, shard_paths

    try:  # checked here: the Hub client would report a bad id only as a failed request
        validate_repo_id(repo_id)
    except HFValidationError as err:
        reason = str(err).splitlines()[0][:300]
        raise HubError(f"{repo_id!r} is not a valid repository id ({reason})") from None
    if not (output / BUILD_FILE).is_file() or not shard_paths(output):
        raise HubError(f"{output} is not a built dataset (no {BUILD_FILE} or no data/train-*.parquet)")
    leaking = local_path_files(output)
    if leaking:
        raise HubError(
            f"not pushed: {', '.join(leaking)} of the dataset hold(s) local paths (absolute paths or names outside the input); "
            "build the dataset again with this version of cn-annotate"
        )
    if (output / CARD_FILE).is_file():
        set_repo_id(output, repo_id)
    api = HfApi()
    try:
        repo = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(
            folder_path=str(output),
            repo_id=repo_id,
            repo_type="dataset",
            ignore_patterns=[".*", "**/.*"],  # temporary files of an interrupted build
            commit_message="Upload dataset built with cn-annotate",
        )
    except OfflineModeIsEnabled:
        raise HubError("cannot push: offline mode is on (HF_HUB_OFFLINE=1)") from None
    except LocalTokenNotFoundError:
        raise HubError("cannot push: not logged in; run `hf auth login` or set HF_TOKEN") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        hint = " (check that you are logged in and may write to it)" if status in (401, 403) else ""
        raise HubError(f"cannot push to {repo_id}: the Hub answered HTTP {status}{hint}") from None
    except Exception as err:  # no network: the HTTP client's connection errors have no common base here
        first_line = str(err).splitlines()[0] if str(err) else "no details"
        raise HubError(f"cannot push to {repo_id}: cannot reach the Hub ({type(err).__name__}: {first_line})") from None
    return str(repo.url)
