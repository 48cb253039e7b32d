"""Where a dataset build's images come from, and their captions.

An input is one of: a folder (searched recursively for image files), a single image, a text file
listing image paths, or an existing dataset (a local folder that ``datasets`` reads, or a Hub id).
Folders, images and listed paths may also be URLs (``s3://``, ``gs://``, ``file://`` or any
scheme fsspec knows), read through pyarrow's filesystems (or fsspec's).
Each yields :class:`SourceItem` records in a deterministic order, keyed by ``file_name``, the
image's path relative to the input, which is what resuming a build relies on. No local path outside
the input is stored: ``identity`` names the input by its folder or file name (a Hub dataset by its
id and the commit read), and a listed file outside the list's folder is named by a digest of its
folder plus its own name.

Captions, in order of precedence: a sidecar ``name.txt`` next to the image; ``metadata.jsonl`` or
``metadata.csv`` with ``file_name`` and ``text`` (the ``imagefolder`` convention, searched in the
image's folder and its parents up to the input); the dataset's caption column; the default prompt.

Hostile or broken inputs (see docs/reliability.md): hidden files and folders (names starting with a
dot) are not searched. A file name that is not valid UTF-8 is kept, with its undecodable bytes
written as ``\\xNN``. A caption that cannot be used for one image (a sidecar that is not UTF-8 text
or not a regular file, a caption that is a JSON object or list) makes that image a skip with the
reason, through :attr:`SourceItem.error`; a metadata file that cannot be parsed (a line that is not
JSON, nested too deeply, a malformed CSV row) refuses the build with its line number, since the
images it was meant to caption cannot be told apart.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from annotators.files import DEFAULT_MAX_FILE_BYTES, FileRefusedError, read_regular_file

__all__ = [
    "DEFAULT_PROMPT",
    "IMAGE_SUFFIXES",
    "Source",
    "SourceError",
    "SourceItem",
    "is_url",
    "open_source",
    "read_input",
]

#: The ControlNet paper's default prompt, used when an image has no caption.
DEFAULT_PROMPT = "a high-quality, detailed, and professional image"

#: Files with these suffixes are inputs when searching a folder; others are not images and are ignored.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

_METADATA_FILES = ("metadata.jsonl", "metadata.csv")
_DATASET_FILE_SUFFIXES = (".parquet", ".arrow")


class SourceError(ValueError):
    """An input that cannot be read at all (as opposed to one bad image, which is skipped)."""


@dataclass(frozen=True)
class SourceItem:
    """One input image: either a file to read or the encoded bytes of a dataset row. ``error`` is
    set for an input known to be unusable before it is read (its caption cannot be used)."""

    file_name: str
    caption: str
    path: str | None = None
    data: bytes | None = None
    error: str | None = None


class Source:
    """An ordered, re-iterable collection of inputs. ``identity`` names it in a build's identity."""

    identity: dict[str, Any]

    def __len__(self) -> int:
        raise NotImplementedError

    def __iter__(self) -> Iterator[SourceItem]:
        raise NotImplementedError


def storable_name(name: str) -> str:
    """``name`` as valid UTF-8 text: undecodable bytes of a file name (which Python holds as lone
    surrogates) are written as ``\\xNN``, so that Arrow and JSON can store the name."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace")
    return name


class CaptionError(ValueError):
    """A caption that cannot be used for its image; the image is skipped with this reason."""


def caption_text(value: Any, where: str) -> str | None:
    """A caption value read from JSON, CSV or a dataset as text: strings as they are, numbers
    written out, None for no caption; a list, an object or text that is not valid Unicode raise
    :class:`CaptionError` (their repr would train on Python syntax)."""
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        kind = {dict: "an object", list: "a list", bool: "a boolean"}.get(type(value), type(value).__name__)
        raise CaptionError(f"caption in {where} is {kind}, not text")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # e.g. a lone "\\ud800" escape in JSON
        raise CaptionError(f"caption in {where} is not valid Unicode text") from None
    return value


def _read_sidecar(path: Path, max_bytes: int) -> str:
    """The caption in a sidecar ``.txt`` (a UTF-8 BOM is dropped); :class:`CaptionError` if unusable."""
    try:
        raw = read_regular_file(path, max_bytes)
    except FileRefusedError as err:
        raise CaptionError(f"caption sidecar {path.name}: {err.reason}") from None
    try:
        return raw.decode("utf-8-sig").strip()
    except UnicodeDecodeError as err:
        raise CaptionError(f"caption sidecar {path.name} is not UTF-8 text (byte {err.start})") from None


#: ``file_name -> caption``, or the reason the caption cannot be used
Captions = dict[str, "str | CaptionError"]


def _jsonl_rows(path: Path, raw: bytes) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(line number, row)`` of a JSON Lines file; a line that is not a JSON object refuses the file."""
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line.decode("utf-8"))
        except UnicodeDecodeError as err:
            raise SourceError(f"{path}: line {number} is not UTF-8 text (byte {err.start})") from None
        except json.JSONDecodeError as err:
            raise SourceError(f"{path}: line {number} is not valid JSON ({err.msg}, column {err.colno})") from None
        except RecursionError:
            raise SourceError(f"{path}: line {number} is nested too deeply") from None
        if not isinstance(row, dict):
            raise SourceError(f"{path}: line {number} is not a JSON object")
        yield number, row


def _csv_rows(path: Path, raw: bytes, max_bytes: int) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise SourceError(f"{path}: line {line} is not UTF-8 text") from None
    # The csv module's own field limit (128 KiB) is process-wide; long captions are legitimate, up to the file limit.
    if csv.field_size_limit() < max_bytes:
        csv.field_size_limit(min(max_bytes, sys.maxsize))
    reader = csv.DictReader(text.splitlines(keepends=True), strict=True)  # strict: an unclosed quote is an error, not a caption
    try:
        for row in reader:
            yield reader.line_num, row
    except csv.Error as err:
        raise SourceError(f"{path}: line {reader.line_num + 1}: malformed CSV ({err})") from None  # line_num: lines of the rows read before


def _read_metadata(path: Path, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> Captions:
    """``file_name -> text`` from an imagefolder metadata file (other columns are ignored)."""
    try:
        raw = read_regular_file(path, max_bytes)
    except FileRefusedError as err:
        raise SourceError(f"{path}: cannot read captions ({err.reason})") from None
    return _metadata_captions(path, raw, max_bytes)


def _metadata_captions(path: Path, raw: bytes, max_bytes: int) -> Captions:
    """``file_name -> text`` (or the reason a caption is unusable) from a metadata file's bytes."""
    rows = _jsonl_rows(path, raw) if path.suffix == ".jsonl" else _csv_rows(path, raw, max_bytes)
    # (line number, row): the number is the file's own, so that a caption's problem names its line
    captions: Captions = {}
    for number, row in rows:
        if not row.get("file_name"):
            continue
        file_name = str(row["file_name"]).replace("\\", "/")
        try:
            text = caption_text(row.get("text"), f"{path.name} line {number}")
        except CaptionError as err:
            captions[file_name] = err
            continue
        if text is not None:
            captions[file_name] = text
    return captions


# --------------------------------------------------------------------------- URLs

#: schemes whose pyarrow filesystem takes ``bucket/key`` paths, one client per bucket
_BUCKET_SCHEMES = frozenset({"s3", "gs", "gcs"})


def is_url(spec: str) -> bool:
    """``scheme://...``; a Windows drive letter (``C:\\``) is not a scheme."""
    scheme, sep, _ = spec.partition("://")
    return bool(sep) and len(scheme) > 1 and scheme.replace("+", "").replace("-", "").isalnum()


@functools.lru_cache(maxsize=32)
def _bucket_filesystem(root: str) -> Any:
    """One client per bucket: creating one may look up the bucket's region over the network."""
    from pyarrow import fs

    return fs.FileSystem.from_uri(root)[0]


def _filesystem(url: str) -> tuple[Any, str]:
    """A pyarrow filesystem and the path in it: pyarrow's own for ``file``, ``s3`` and ``gs``,
    else fsspec's (which needs its package for the scheme, e.g. adlfs), wrapped for pyarrow."""
    from pyarrow import fs

    scheme, _, rest = url.partition("://")
    if scheme == "file":
        return fs.LocalFileSystem(), fs.FileSystem.from_uri(url)[1]
    if scheme in _BUCKET_SCHEMES:
        return _bucket_filesystem(f"{scheme}://{rest.split('/', 1)[0]}"), rest.rstrip("/")
    import fsspec

    filesystem, path = fsspec.core.url_to_fs(url)
    return fs.PyFileSystem(fs.FSSpecHandler(filesystem)), path


def read_input(path: str) -> bytes:
    """The bytes of a local file or of a URL; OSError (FileNotFoundError, ...) when it cannot be read."""
    if not is_url(path):
        return Path(path).read_bytes()
    try:
        filesystem, inner = _filesystem(path)
    except (ValueError, ImportError) as err:  # an unknown scheme, or fsspec's package for it is missing
        raise OSError(f"cannot open {path.partition('://')[0]}:// URLs ({err})") from None
    with filesystem.open_input_stream(inner) as stream:
        return stream.read()


class _Captions:
    """Caption lookup for image files: sidecar, then metadata files, then the prompt."""

    def __init__(self, prompt: str, metadata: dict[Path, str | CaptionError], sidecars: set[Path] | None, max_bytes: int) -> None:
        self.prompt = prompt
        self.metadata = metadata
        self.sidecars = sidecars  # known .txt files (folder input), or None to look on disk
        self.max_bytes = max_bytes

    def __call__(self, image: Path) -> tuple[str, str | None]:
        """The caption of ``image``, and the reason it cannot be used (None when it can)."""
        sidecar = image.with_suffix(".txt")
        if (sidecar in self.sidecars) if self.sidecars is not None else (os.path.lexists(sidecar) and not sidecar.is_dir()):
            try:
                return _read_sidecar(sidecar, self.max_bytes), None
            except CaptionError as err:
                return self.prompt, str(err)
        found = self.metadata.get(image, self.prompt)
        if isinstance(found, CaptionError):
            return self.prompt, str(found)
        return found, None


class FolderSource(Source):
    """Image files under a folder, recursively, sorted by relative path; hidden files and folders
    and ``exclude`` (e.g. the output folder when it lies inside the input) are not searched."""

    def __init__(self, root: Path, prompt: str, exclude: Path | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.root = root
        self.identity = {"kind": "folder", "name": root.resolve().name}
        excluded = exclude.resolve() if exclude is not None else None
        images: list[tuple[str, Path]] = []
        sidecars: set[Path] = set()
        metadata: dict[Path, str | CaptionError] = {}
        for folder, dirs, files in os.walk(root):
            here = Path(folder)
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (here / d).resolve() != excluded)
            for name in files:
                if name.startswith("."):  # like hidden folders: e.g. macOS's ._photo.jpg resource forks are not images
                    continue
                path = here / name
                suffix = path.suffix.lower()
                if suffix in IMAGE_SUFFIXES:
                    images.append((storable_name(path.relative_to(root).as_posix()), path))
                elif suffix == ".txt":
                    sidecars.add(path)
                elif name in _METADATA_FILES:
                    for file_name, text in _read_metadata(path, max_file_bytes).items():
                        metadata[here / file_name] = text  # folders are walked top-down: the nearest file wins
        images.sort()
        self.images = images
        self.captions = _Captions(prompt, metadata, sidecars, max_file_bytes)

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[SourceItem]:
        for file_name, path in self.images:
            caption, error = self.captions(path)
            yield SourceItem(file_name, caption, path=str(path), error=error)


class ListSource(Source):
    """A text file with one image path per line (blank lines and ``#`` comments ignored); relative
    paths are relative to the list file's folder. Every listed path is an input, whatever its suffix."""

    def __init__(self, list_file: Path, prompt: str, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.identity = {"kind": "list", "name": list_file.name}
        try:
            lines = read_regular_file(list_file, max_file_bytes).decode("utf-8").splitlines()
        except FileRefusedError as err:
            raise SourceError(f"{list_file}: cannot read the list of images ({err.reason})") from None
        except UnicodeDecodeError as err:
            raise SourceError(f"{list_file}: cannot read the list of images (not UTF-8 text: {err})") from None
        entries = [line.strip() for line in lines]
        entries = [entry for entry in entries if entry and not entry.startswith("#")]
        base = list_file.parent
        self.files: dict[str, Path | str] = {}
        for entry in entries:  # a file listed twice is one input
            if is_url(entry):
                self.files.setdefault(entry, entry)
            else:
                path = Path(entry) if Path(entry).is_absolute() else base / entry
                self.files.setdefault(_name_in(base, path), path)
        self.captions = _Captions(prompt, {}, None, max_file_bytes)
        self.prompt = prompt

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[SourceItem]:
        for name, path in self.files.items():
            if isinstance(path, str):  # a URL, read remotely; captions come from the prompt
                yield SourceItem(name, self.prompt, path=path)
                continue
            caption, error = self.captions(path)
            yield SourceItem(storable_name(name), caption, path=str(path), error=error)


def _name_in(folder: Path, path: Path) -> str:
    """``path`` relative to ``folder``; outside it, a digest of its folder and its own name, so that
    no local path outside the input is stored (two listed files never share a name)."""
    root, target = Path(os.path.abspath(folder)), Path(os.path.abspath(path))
    try:
        return target.relative_to(root).as_posix()
    except ValueError:
        digest = hashlib.blake2b(str(target.parent).encode("utf-8", "surrogateescape"), digest_size=4).hexdigest()
        return f"{digest}/{target.name}"


class SingleImageSource(Source):
    def __init__(self, path: Path, prompt: str, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES) -> None:
        self.path = path
        self.identity = {"kind": "image", "name": path.name}
        self.captions = _Captions(prompt, {}, None, max_file_bytes)

    def __len__(self) -> int:
        return 1

    def __iter__(self) -> Iterator[SourceItem]:
        caption, error = self.captions(self.path)
        yield SourceItem(storable_name(self.path.name), caption, path=str(self.path), error=error)


class RemoteSource(Source):
    """Image files under a URL (a "folder" prefix, searched recursively, or one image), sorted by
    relative path, with sidecar ``.txt`` and ``metadata.jsonl``/``.csv`` captions as for a folder.
    Hidden folders are not searched. Items carry the URL, which workers read with
    :func:`read_input`."""

    def __init__(self, url: str, prompt: str) -> None:
        from pyarrow import fs

        self.identity = {"kind": "url", "path": url}
        self.prompt = prompt
        try:
            filesystem, base = _filesystem(url)
            info = filesystem.get_file_info(base)
            if info.type == fs.FileType.File:
                self.images = [(base.rsplit("/", 1)[-1], url)]
                self.captions: Captions = {}
                return
            if info.type != fs.FileType.Directory:
                raise FileNotFoundError("no such file or folder")
            found = filesystem.get_file_info(fs.FileSelector(base, recursive=True))
        except (OSError, ValueError, ImportError) as err:
            raise SourceError(f"{url}: cannot list ({err})") from None
        root = url.rstrip("/")
        files = {}
        for entry in found:
            relative = entry.path[len(base) :].lstrip("/")
            if entry.type == fs.FileType.File and not any(part.startswith(".") for part in relative.split("/")[:-1]):
                files[relative] = entry.path
        captions: Captions = {}
        for relative in sorted((r for r in files if r.rsplit("/", 1)[-1] in _METADATA_FILES), key=lambda r: -r.count("/")):
            folder = relative.rpartition("/")[0]
            raw = self._read_text(filesystem, files[relative], url).encode("utf-8")
            for file_name, caption in _metadata_captions(Path(relative), raw, DEFAULT_MAX_FILE_BYTES).items():
                captions.setdefault(f"{folder}/{file_name}" if folder else file_name, caption)  # the nearest file wins
        images = sorted(r for r in files if Path(r).suffix.lower() in IMAGE_SUFFIXES)
        for relative in images:  # sidecars, the first choice
            sidecar = str(Path(relative).with_suffix(".txt").as_posix())
            if sidecar in files:
                try:
                    captions[relative] = self._read_text(filesystem, files[sidecar], url).strip()
                except SourceError:  # as for a local folder: an unreadable sidecar leaves the next caption
                    pass
        self.images = [(relative, f"{root}/{relative}") for relative in images]
        self.captions = captions

    @staticmethod
    def _read_text(filesystem: Any, path: str, url: str) -> str:
        try:
            with filesystem.open_input_stream(path) as stream:
                return stream.read().decode("utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise SourceError(f"{url}: cannot read {path.rsplit('/', 1)[-1]} ({err})") from None

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[SourceItem]:
        for file_name, url in self.images:
            caption = self.captions.get(file_name, self.prompt)
            if isinstance(caption, CaptionError):
                yield SourceItem(file_name, self.prompt, path=url, error=str(caption))
            else:
                yield SourceItem(file_name, caption, path=url)


class DatasetSource(Source):
    """Rows of a dataset read with ``datasets``: a local folder or a Hub id (streamed, so nothing is
    downloaded ahead, and read at one commit: ``revision`` or, by default, the latest one).
    ``file_name`` is the row index, zero-padded, which is stable across runs."""

    def __init__(
        self, spec: str, *, local: bool, split: str, image_column: str, caption_column: str | None, prompt: str, revision: str | None = None
    ) -> None:
        import datasets

        commit = None if local else hub_commit(spec, revision)
        self.identity = {
            "kind": "dataset",
            **({"name": Path(spec).resolve().name} if local else {"hub_id": spec, "revision": commit}),
            "split": split,
            "image_column": image_column,
            "caption_column": caption_column,
        }
        try:
            if local and any((Path(spec) / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
                loaded = datasets.load_from_disk(spec)
                dataset = loaded[split] if isinstance(loaded, datasets.DatasetDict) else loaded
            elif local:
                dataset = datasets.load_dataset(spec, split=split)
            else:
                dataset = datasets.load_dataset(spec, split=split, streaming=True, revision=commit)
        except Exception as err:  # datasets raises many types (offline, missing split, bad files)
            raise SourceError(f"{spec}: cannot load the dataset ({type(err).__name__}: {err})") from None
        columns = list(dataset.column_names or dataset.features or [])
        if columns:  # a streamed dataset may not know its columns before the first row
            if image_column not in columns:
                raise SourceError(f"{spec}: no column {image_column!r} (columns: {', '.join(columns)}); choose one with --image-column")
            if caption_column is None and "text" in columns:
                caption_column = "text"
            if caption_column is not None and caption_column not in columns:
                raise SourceError(f"{spec}: no column {caption_column!r} (columns: {', '.join(columns)}); choose one with --caption-column")
            dataset = dataset.select_columns([image_column] + ([caption_column] if caption_column else []))
        if isinstance(dataset.features.get(image_column) if dataset.features else None, datasets.Image):
            dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
        self.dataset = dataset
        self.image_column = image_column
        self.caption_column = caption_column
        self.prompt = prompt
        try:
            self.length = len(dataset)  # type: ignore[arg-type]
        except TypeError:  # streamed: the split size is known only from the dataset's info, if at all
            splits = dataset.info.splits or {}
            self.length = splits[split].num_examples if split in splits else 0
        self.width = max(8, len(str(self.length)))

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[SourceItem]:
        for index, row in enumerate(self.dataset):
            value = row[self.image_column]
            file_name = f"{index:0{self.width}d}"
            error = None
            try:
                caption = caption_text(row[self.caption_column] if self.caption_column else None, f"column {self.caption_column}")
            except CaptionError as err:
                caption, error = None, str(err)
            caption = self.prompt if caption is None else caption
            if isinstance(value, dict):  # an Image feature read without decoding: bytes and/or path
                if value.get("bytes"):
                    yield SourceItem(file_name, caption, path=value.get("path"), data=value["bytes"], error=error)
                else:
                    yield SourceItem(file_name, caption, path=value.get("path") or "", error=error)
            elif isinstance(value, str):  # a column of file paths
                yield SourceItem(file_name, caption, path=value, error=error)
            elif isinstance(value, bytes):
                yield SourceItem(file_name, caption, data=value, error=error)
            else:  # e.g. a decoded PIL image from a dataset saved without Image features
                yield SourceItem(file_name, caption, data=_encode_pil(value), error=error)


def hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit that ``revision`` (default: the main branch) of a Hub dataset points to, so that a
    build, and its resumption, read one version of it; ``revision`` itself when the Hub cannot be
    asked (offline: ``datasets`` then reads its cache)."""
    from huggingface_hub import HfApi

    try:
        return HfApi().dataset_info(repo_id, revision=revision).sha or revision
    except Exception:  # offline, or not on the Hub: load_dataset gives the error that matters
        return revision


def _encode_pil(value: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    value.save(buffer, "PNG")
    return buffer.getvalue()


def _looks_like_dataset_folder(folder: Path) -> bool:
    """A folder that ``datasets`` reads as data files rather than an image folder: one saved with
    ``save_to_disk``, or with Parquet or Arrow files at its top or in ``data/`` (the Hub layout)."""
    if any((folder / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
        return True
    for place in (folder, folder / "data"):
        if place.is_dir() and any(p.name.endswith(_DATASET_FILE_SUFFIXES) for p in place.iterdir()):
            return True
    return False


def open_source(
    spec: str,
    *,
    prompt: str = DEFAULT_PROMPT,
    image_column: str | None = None,
    caption_column: str | None = None,
    split: str = "train",
    exclude: Path | None = None,
    revision: str | None = None,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Source:
    """The inputs named by ``spec``: a folder, an image, a list file, a dataset folder, a Hub id, or
    the URL of a folder or an image.

    A folder is read as a dataset when ``image_column`` is given or it holds Parquet or Arrow
    files; otherwise it is searched for images. A path that does not exist is taken as a Hub id.
    """
    if is_url(spec):
        return RemoteSource(spec, prompt)
    path = Path(spec)
    if path.is_dir():
        if image_column is not None or caption_column is not None or _looks_like_dataset_folder(path):
            return DatasetSource(spec, local=True, split=split, image_column=image_column or "image", caption_column=caption_column, prompt=prompt)
        return FolderSource(path, prompt, exclude, max_file_bytes)
    if path.exists():  # a file, or something posing as one (a pipe): it is read as a file, and refused if it is not one
        if path.suffix.lower() in IMAGE_SUFFIXES:
            return SingleImageSource(path, prompt, max_file_bytes)
        return ListSource(path, prompt, max_file_bytes)
    if os.path.isabs(spec) or spec.startswith((".", "~")) or spec.count("/") > 1:
        raise SourceError(f"{spec}: no such file or folder")
    return DatasetSource(spec, local=False, split=split, image_column=image_column or "image", caption_column=caption_column, prompt=prompt, revision=revision)
