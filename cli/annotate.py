"""`cn-annotate`: run annotators from the command line.

    cn-annotate list                          the annotators, and whether their weights are present
    cn-annotate canny --help                  an annotator's parameters with their defaults
    cn-annotate canny photo.jpg -o edges.png  annotate one file, for a quick look
    cn-annotate canny ./images -o ./ds        build a paired ControlNet training dataset
    cn-annotate canny,scribble_xdog ./images -o ./ds   several condition columns in one pass
    cn-annotate push ./ds user/my-dataset     share it on the Hub

Each annotator id is a subcommand built from its config dataclass, so plug-ins get the same
command line as the built-in annotators.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import logging
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

import annotators
from annotators.base import AnnotatorConfig
from annotators.image import ImageError, encode_png, load_image, resize_image
from annotators.weights import WeightsNotFoundError
from cli.common import EXIT_FAILURE, EXIT_USAGE, err_console, fail
from cli.options import Command, Group, config_parameters, given_values
from controlnet.dataset.shards import prefer_system_allocator
from controlnet.dataset.sources import IMAGE_SUFFIXES

EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143  # 128 + SIGTERM, as a shell reports a process ended by it


class Terminated(KeyboardInterrupt):
    """SIGTERM (a service manager, a batch scheduler, ``kill``): handled like Ctrl-C, so the
    builder keeps the rows in hand as a finished shard."""


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _NoticeHandler(logging.Handler):
    """The builder's notices (a shard rebuilt, a worker replaced) as one warning line each."""

    def emit(self, record: logging.LogRecord) -> None:
        err_console.print(f"[yellow]warning:[/] {record.getMessage()}", soft_wrap=True, markup=True, highlight=False)


@contextlib.contextmanager
def _builder_notices() -> Iterator[None]:
    logger = logging.getLogger("controlnet.dataset")
    handler = _NoticeHandler(logging.WARNING)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _parse_setting(setting: str, names: list[str]) -> tuple[str, str, str]:
    """``ANNOTATOR.PARAM=VALUE`` (or ``PARAM=VALUE`` with a single annotator)."""
    key, sep, value = setting.partition("=")
    if not sep:
        raise typer.BadParameter(f"{setting!r} is not KEY=VALUE", param_hint="--set")
    target, dot, param_name = key.rpartition(".")
    if not dot:
        if len(names) != 1:
            raise typer.BadParameter(f"{setting!r}: name the annotator, e.g. {names[0]}.{key}=...", param_hint="--set")
        target = names[0]
    if target not in names:
        raise typer.BadParameter(f"{setting!r}: {target!r} is not one of {', '.join(names)}", param_hint="--set")
    return target, param_name, value


def _coerce(config_cls: type[AnnotatorConfig], param_name: str, value: str) -> Any:
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    if param_name not in fields:
        raise typer.BadParameter(f"unknown parameter {param_name!r}; valid: {', '.join(fields)}", param_hint="--set")
    default = fields[param_name].default
    try:
        if isinstance(default, bool):
            if value.lower() not in _BOOLEANS:
                raise ValueError(value)
            return _BOOLEANS[value.lower()]
        return value if default is None else type(default)(value)
    except ValueError:
        raise typer.BadParameter(f"{param_name}={value!r} is not a valid {type(default).__name__}", param_hint="--set") from None


_BOOLEANS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def collect_params(names: list[str], settings: tuple[str, ...], direct: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per-annotator parameters from ``--set`` and, for a single annotator, its own options."""
    params: dict[str, dict[str, Any]] = {name: {} for name in names}
    for setting in settings:
        target, param_name, value = _parse_setting(setting, names)
        params[target][param_name] = _coerce(annotators.get_class(target).Config, param_name, value)
    if len(names) == 1:
        params[names[0]].update({k: v for k, v in direct.items() if v is not None})
    return params


def build_annotators(names: list[str], params: dict[str, dict[str, Any]]) -> list[annotators.Annotator]:
    try:
        return [annotators.create(name, **params[name]) for name in names]
    except ValueError as err:
        fail(str(err), EXIT_USAGE)


def annotate_file(annotator: annotators.Annotator, source: Path, output: Path, resolution: int | None) -> None:
    """Annotate one image file and write the map (PNG, or the format of ``output``'s suffix)."""
    image = load_image(source)
    if resolution is not None:
        image = resize_image(image, resolution)
    (condition,) = annotator([image])
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix.lower() == ".png":
        output.write_bytes(encode_png(condition, grayscale=annotator.grayscale))
    else:
        from PIL import Image

        Image.fromarray(condition).save(output)


#: BuildConfig fields that the command line sets in its own way (arguments, or not at all)
_NOT_OPTIONS = ("input", "output", "annotators", "filters", "central")
BUILD_PANEL = "Dataset build"


def _build_parameters(classes: list[type[annotators.Annotator]]) -> list[inspect.Parameter]:
    """The builder's options, generated from BuildConfig and the filters of the annotators' data
    kinds, plus the command line's own --strict and --preview."""
    from controlnet.dataset.config import BuildConfig

    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = config_parameters(BuildConfig, exclude=_NOT_OPTIONS, panel=BUILD_PANEL)
    for filters in _filter_classes(classes):
        parameters += config_parameters(filters, panel=BUILD_PANEL)
    parameters += [
        inspect.Parameter("strict", keyword, default=False, annotation=Annotated[bool, typer.Option("--strict", help="exit 1 if any input was skipped", show_default=False, rich_help_panel=BUILD_PANEL)]),
        inspect.Parameter("preview", keyword, default=None, annotation=Annotated[Optional[Path], typer.Option("--preview", metavar="FILE.png", help="also write a contact sheet of image and condition pairs", rich_help_panel=BUILD_PANEL)]),  # noqa: UP007
    ]
    return parameters


def _filter_classes(classes: list[type[annotators.Annotator]]) -> list[type[AnnotatorConfig]]:
    """The filter configs of the annotators' data kinds, each once."""
    found: list[type[AnnotatorConfig]] = []
    for cls in classes:
        kind = cls.data_kind
        if kind is not None and kind.Filters is not None and kind.Filters not in found:
            found.append(kind.Filters)
    return found


def _build_dataset(names: list[str], chosen: list[annotators.Annotator], input_spec: str, output: Path, options: dict[str, Any]) -> None:
    from controlnet.dataset.build import BuildConfig, BuildError, BuildProgress, build
    from controlnet.dataset.card import contact_sheet
    from controlnet.dataset.sources import SourceError

    try:
        filters = tuple(cls(**given_values(cls, options)) for cls in _filter_classes([type(a) for a in chosen]))
        config = BuildConfig(
            input=input_spec,
            output=output,
            annotators=tuple((name, annotator.config) for name, annotator in zip(names, chosen)),
            filters=tuple(f for f in filters if f != type(f)()),  # filters left at their defaults keep every row
            **given_values(BuildConfig, options),
        )
    except ValueError as err:
        fail(str(err), EXIT_USAGE)
    strict, preview = options["strict"], options["preview"]
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("[progress.data.speed]{task.fields[rate]}"),
        TimeElapsedColumn(),
        TextColumn("ETA [progress.remaining]{task.fields[eta]}"),
        console=err_console,
        auto_refresh=False,  # no refresh thread, so worker processes are forked from a single thread
    )
    task_id: Any = None
    last_refresh = started = 0.0

    def report(state: BuildProgress) -> None:
        nonlocal task_id, last_refresh, started
        now = time.monotonic()
        if task_id is None:
            started = now
            task_id = progress.add_task(",".join(names), total=state.total, completed=state.done_before, rate="- img/s", eta="-:--:--")
            if state.done_before:
                err_console.print(f"resuming: {state.done_before} of {state.total} inputs already done")
        # Rate and ETA over this run so far: steadier than Rich's windowed speed, and a resumed
        # run's head start does not count as speed.
        done = state.done_before + state.processed
        rate = state.processed / (now - started) if now > started else 0.0
        eta = time.strftime("%H:%M:%S", time.gmtime((state.total - done) / rate)) if rate and state.total >= done else "-:--:--"
        progress.update(task_id, completed=done, rate=f"{rate:.1f} img/s" if rate else "- img/s", eta=eta)
        if now - last_refresh > 0.2 or done >= state.total:
            progress.refresh()
            last_refresh = now

    try:
        with _sigterm_interrupts(), _builder_notices(), progress:
            result = build(config, report)
    except (BuildError, SourceError) as err:
        fail(str(err), EXIT_USAGE)
    except KeyboardInterrupt as err:
        how = "terminated" if isinstance(err, Terminated) else "interrupted"
        err_console.print(f"[yellow]{how}:[/] finished rows are kept in {output}; run the same command again to continue")
        raise typer.Exit(EXIT_TERMINATED if isinstance(err, Terminated) else EXIT_INTERRUPTED) from None

    summary = Table(title=f"dataset {output}", show_header=False)
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("rows", f"{result.rows} ({result.rows_added} added now)")
    kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(result.skip_kinds.items()))
    summary.add_row("skipped", f"{result.skipped} ({result.skipped_added} now)" + (f"; {kinds}; see {output / 'skipped.jsonl'}" if result.skipped else ""))
    summary.add_row("time", f"{result.seconds:.1f} s, {result.images_per_second:.1f} images/s")
    if config.engine == "ray":
        summary.add_row("engine", f"ray, {result.nodes} node{'s' if result.nodes != 1 else ''}")
    if result.rows:
        summary.add_row("load with", f'datasets.load_dataset("{output}", split="train")')
    Console().print(summary)
    if not result.rows:
        err_console.print("[yellow]no rows:[/] every input was skipped, so there is no dataset to load yet; the reasons are in skipped.jsonl")
    if preview is not None:
        try:
            drawn = contact_sheet(output, preview)
            Console().print(f"wrote {preview} ({drawn} rows)")
        except ValueError as err:
            err_console.print(f"[yellow]no preview:[/] {err}")
    if strict and result.skipped:
        fail(f"{result.skipped} input(s) skipped (--strict)", EXIT_FAILURE)


def _run_annotator(names: list[str], input_spec: str, output: Path, options: dict[str, Any], settings: tuple[str, ...], direct: dict[str, Any]) -> None:
    params = collect_params(names, settings, direct)
    if options["batch_size"] is not None:  # batched annotators take it as their own batch size
        for name in names:
            if any(f.name == "batch_size" for f in dataclasses.fields(annotators.get_class(name).Config)):
                params[name].setdefault("batch_size", options["batch_size"])
    chosen = build_annotators(names, params)
    if output.suffix.lower() in IMAGE_SUFFIXES:
        input_path = Path(input_spec)
        if len(chosen) != 1:
            fail("writing a single map needs a single annotator; give an output folder for several", EXIT_USAGE)
        if not input_path.is_file():
            fail(f"{input_path}: not a file (a single map is written from a single image)", EXIT_USAGE)
        try:
            from controlnet.dataset.config import DEFAULT_RESOLUTION

            keep_size, resolution = options["keep_size"], options["resolution"] or DEFAULT_RESOLUTION
            annotate_file(chosen[0], input_path, output, None if keep_size else resolution)
        except (ImageError, WeightsNotFoundError) as err:
            fail(str(err))
        except ValueError as err:  # a checkpoint that does not fit the network
            fail(str(err))
        Console().print(f"wrote {output}")
        return
    _build_dataset(names, chosen, input_spec, output, options)


def annotator_command(spec: str) -> Any:
    """The subcommand for ``spec``: one annotator id, or several joined by commas."""
    names = [n.strip() for n in spec.split(",") if n.strip()]
    try:
        classes = [annotators.get_class(name) for name in names]
    except annotators.UnknownAnnotatorError as err:
        fail(str(err), EXIT_USAGE)
    single = len(classes) == 1
    keyword = inspect.Parameter.KEYWORD_ONLY
    parameters = [
        inspect.Parameter("input_spec", keyword, annotation=Annotated[str, typer.Argument(metavar="INPUT", help="image folder (searched recursively), image, text file listing paths, dataset folder or Hub dataset id")]),
        inspect.Parameter("output", keyword, annotation=Annotated[Path, typer.Option("-o", "--output", help="dataset folder, or an image file (.png) for a single image")]),
        inspect.Parameter("settings", keyword, default=[], annotation=Annotated[list[str], typer.Option("--set", metavar="KEY=VALUE", help="set a parameter (repeatable); KEY is ID.NAME with several annotators", show_default=False)]),
    ]
    build_parameters = _build_parameters(classes)
    taken = {p.name for p in parameters + build_parameters}
    if single:  # an annotator parameter named like a build option (batch_size) is set through the latter
        parameters += [p for p in config_parameters(classes[0].Config) if p.name not in taken]
    parameters += build_parameters
    build_names = {p.name for p in build_parameters}
    description = classes[0].description if single else "Several annotators in one pass: " + ", ".join(names)

    def command(*, input_spec: str, output: Path, settings: list[str], **rest: Any) -> None:
        build_values = {name: rest.pop(name) for name in list(rest) if name in build_names}
        _run_annotator(names, input_spec, output, build_values, tuple(settings), rest)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    single_app = typer.Typer(add_completion=False, rich_markup_mode="rich")
    single_app.command(name=spec, help=description, cls=Command)(command)
    built = typer.main.get_command(single_app)
    built.name = spec
    return built


class AnnotateGroup(Group):
    """Fixed commands (``list``) plus one lazily built subcommand per annotator id."""

    def list_commands(self, ctx: Any) -> list[str]:
        return list(super().list_commands(ctx)) + annotators.names()

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        fixed = super().get_command(ctx, cmd_name)
        return fixed if fixed is not None else annotator_command(cmd_name)


app = typer.Typer(
    cls=AnnotateGroup,
    name="cn-annotate",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
)


@app.callback()
def _group() -> None:
    """Turn images into ControlNet condition maps. Run `cn-annotate list` for the annotators."""


@app.command("list", cls=Command)
def list_annotators(
    weights: Annotated[Optional[Path], typer.Option(help="also look for checkpoints in this file or folder")] = None,  # noqa: UP007
    as_json: Annotated[bool, typer.Option("--json", help="print the list as JSON, for scripts", show_default=False)] = False,
) -> None:
    """List the annotators: whether each needs weights, whether they are present, and their licence.

    On a terminal, a table; piped, one whole line per annotator: id, weights, description,
    licence, and where a plug-in comes from.
    """
    entries = []
    for info in annotators.available():
        if not info.needs_weights:
            state = "bundled" if info.weights_license else "none needed"
        else:
            present = annotators.get_class(info.name).weights_present(str(weights) if weights else None)
            state = "present" if present else "missing"
        entries.append({**dataclasses.asdict(info), "weights": state})
    if as_json:
        sys.stdout.write(json.dumps(entries, indent=2) + "\n")
        return
    console = Console()
    if not console.is_terminal:  # piped: whole ids and descriptions, one line each
        width = max(len(entry["name"]) for entry in entries)
        for entry in entries:
            licence = f"  [{entry['weights_license']}]" if entry["weights_license"] else ""
            source = f"  (from {entry['source']})" if entry["source"] != "builtin" else ""
            sys.stdout.write(f"{entry['name']:<{width}}  {entry['weights']:<11}  {entry['description']}{licence}{source}\n")
        return
    table = Table(title="cn-annotate annotators")
    table.add_column("name", no_wrap=True, min_width=max(len(entry["name"]) for entry in entries))
    for column in ("description", "weights", "weights licence", "source"):
        table.add_column(column)
    colours = {"present": "[green]present[/]", "missing": "[yellow]missing[/]"}
    for entry in entries:
        table.add_row(entry["name"], entry["description"], colours.get(entry["weights"], entry["weights"]), entry["weights_license"] or "", entry["source"])
    console.print(table)


@app.command("push", cls=Command)
def push(
    output: Annotated[Path, typer.Argument(metavar="OUT_DIR", help="a dataset folder built by cn-annotate")],
    repo_id: Annotated[str, typer.Argument(metavar="REPO_ID", help="dataset repository, e.g. user/my-dataset")],
    private: Annotated[bool, typer.Option("--private", help="create the repository private")] = False,
) -> None:
    """Upload a built dataset to the Hugging Face Hub (uses `hf auth login` or HF_TOKEN)."""
    from controlnet.dataset.hub import HubError, push_dataset

    try:
        url = push_dataset(output, repo_id, private=private)
    except HubError as err:
        fail(str(err))
    Console().print(f"pushed {output} to {url}")


def main() -> None:
    prefer_system_allocator()  # before anything imports pyarrow
    app()


if __name__ == "__main__":
    main()
