"""`cn-annotate`: run annotators from the command line.

    cn-annotate list                          the annotators, and whether their weights are present
    cn-annotate canny --help                  an annotator's parameters with their defaults
    cn-annotate canny photo.jpg -o edges.png  annotate one file, for a quick look

Each annotator id is a subcommand built from its config dataclass, so plug-ins get the same
command line as the built-in annotators.
"""

from __future__ import annotations

import dataclasses
import inspect
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

import annotators
from annotators.base import AnnotatorConfig
from annotators.image import ImageError, encode_png, load_image, resize_image
from cli.common import EXIT_USAGE, fail

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def _option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _value_type(field: dataclasses.Field) -> Any:
    choices = field.metadata.get("choices")
    if choices:
        return Literal[tuple(choices)]  # type: ignore[valid-type]
    return str if field.default is None else type(field.default)


def _config_parameters(config_cls: type[AnnotatorConfig]) -> list[inspect.Parameter]:
    """One keyword parameter per config field, with its help, range and reference default.

    Options default to None so that only what the user typed overrides the config's defaults.
    """
    parameters = []
    for name, default, help_text in config_cls.describe():
        field = next(f for f in dataclasses.fields(config_cls) if f.name == name)
        flag = _option_name(name) + (f"/--no-{name.replace('_', '-')}" if isinstance(default, bool) else "")
        option = typer.Option(flag, help=help_text, show_default=str(default) if default is not None else False)
        annotation = Annotated[Optional[_value_type(field)], option]  # noqa: UP007 (typer reads Optional)
        parameters.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return parameters


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


def _run_annotator(names: list[str], input_path: Path, output: Path, resolution: int, keep_size: bool, settings: tuple[str, ...], direct: dict[str, Any]) -> None:
    chosen = build_annotators(names, collect_params(names, settings, direct))
    if output.suffix.lower() in IMAGE_SUFFIXES:
        if len(chosen) != 1:
            fail("writing a single map needs a single annotator; give an output folder for several", EXIT_USAGE)
        if not input_path.is_file():
            fail(f"{input_path}: not a file (a single map is written from a single image)", EXIT_USAGE)
        try:
            annotate_file(chosen[0], input_path, output, None if keep_size else resolution)
        except ImageError as err:
            fail(str(err))
        Console().print(f"wrote {output}")
        return
    fail(f"{output}: building a dataset folder is not available yet; give an image file name (e.g. out.png)", EXIT_USAGE)


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
        inspect.Parameter("input_path", keyword, annotation=Annotated[Path, typer.Argument(exists=True, metavar="INPUT", help="image file")]),
        inspect.Parameter("output", keyword, annotation=Annotated[Path, typer.Option("-o", "--output", help="output image file (.png)")]),
        inspect.Parameter("resolution", keyword, default=512, annotation=Annotated[int, typer.Option(min=64, help="short side, rounded to multiples of 64 (reference resize_image)")]),
        inspect.Parameter("keep_size", keyword, default=False, annotation=Annotated[bool, typer.Option("--keep-size", help="annotate at the original size")]),
        inspect.Parameter("settings", keyword, default=[], annotation=Annotated[list[str], typer.Option("--set", metavar="[ANNOTATOR.]PARAM=VALUE", help="set a parameter (repeatable)")]),
    ]
    if single:
        parameters += _config_parameters(classes[0].Config)
    description = classes[0].description if single else "Several annotators in one pass: " + ", ".join(names)

    def command(*, input_path: Path, output: Path, resolution: int, keep_size: bool, settings: list[str], **direct: Any) -> None:
        _run_annotator(names, input_path, output, resolution, keep_size, tuple(settings), direct)

    command.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in parameters}
    single_app = typer.Typer(add_completion=False, rich_markup_mode="rich")
    single_app.command(name=spec, help=description)(command)
    built = typer.main.get_command(single_app)
    built.name = spec
    return built


class AnnotateGroup(TyperGroup):
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


@app.command("list")
def list_annotators() -> None:
    """List the annotators, with whether each needs weights and whether they are present."""
    table = Table(title="cn-annotate annotators")
    for column in ("name", "description", "weights", "source"):
        table.add_column(column)
    for info in annotators.available():
        cls = annotators.get_class(info.name)
        if not info.needs_weights:
            weights = "none needed"
        else:
            weights = "[green]present[/]" if cls.weights_present() else "[yellow]missing[/]"  # type: ignore[attr-defined]
        table.add_row(info.name, info.description, weights, info.source)
    Console().print(table)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
