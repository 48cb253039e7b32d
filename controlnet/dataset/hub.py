"""Sharing a built dataset on the Hugging Face Hub.

Authentication is huggingface_hub's own: ``hf auth login`` or the ``HF_TOKEN`` environment
variable. The token is never read, printed or logged here.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["HubError", "push_dataset"]


class HubError(RuntimeError):
    """A push that failed, with a one-line reason that never contains the token."""


def push_dataset(output: Path, repo_id: str, *, private: bool = False) -> str:
    """Upload the dataset folder ``output`` to the dataset repo ``repo_id``; returns its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        HfHubHTTPError,
        LocalTokenNotFoundError,
        OfflineModeIsEnabled,
    )

    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from controlnet.dataset.layout import BUILD_FILE, shard_paths

    try:  # checked here: the Hub client would report a bad id only as a failed request
        validate_repo_id(repo_id)
    except HFValidationError as err:
        reason = str(err).splitlines()[0][:300]
        raise HubError(f"{repo_id!r} is not a valid repository id ({reason})") from None
    if not (output / BUILD_FILE).is_file() or not shard_paths(output):
        raise HubError(f"{output} is not a built dataset (no {BUILD_FILE} or no data/train-*.parquet)")
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
