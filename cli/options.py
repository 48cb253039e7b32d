"""Typer options generated from config dataclasses: one option per field declared with ``param()``,
its help and range from the field, so no option is copied by hand into a command line."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable, Mapping
from typing import Annotated, Any, Literal, Optional

import typer

from annotators.base import described_fields

__all__ = ["config_parameters", "option_name", "given_values"]


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _hinted_type(hint: str) -> type:
    """The scalar type named by a field's annotation (a string under postponed evaluation)."""
    return int if hint.startswith(("int", "tuple[int")) else float if hint.startswith(("float", "tuple[float")) else str


def _value_type(field: dataclasses.Field) -> Any:
    choices = field.metadata.get("choices")
    if choices:
        return Literal[tuple(choices)]  # type: ignore[valid-type]
    default = field.default
    if default is None or default is dataclasses.MISSING or isinstance(default, tuple):
        return _hinted_type(str(field.type))  # an optional, required or repeatable value: its annotation's type
    return type(default)


def config_parameters(
    config_cls: type, *, exclude: Iterable[str] = (), panel: str | None = None,
    flags: Mapping[str, tuple[str, ...]] | None = None, repeated: bool = False,
) -> list[inspect.Parameter]:
    """One keyword parameter per ``param()`` field of ``config_cls`` (a dataclass), with its help,
    range and default shown. Options default to None, so that only what the user typed overrides the
    config's own defaults (see :func:`given_values`); a field without a default is a required option.

    ``flags`` replaces a field's option names (``{"output_dir": ("--output-dir", "-o")}``). A field
    whose default is a tuple, and with ``repeated`` every field but the on/off ones, is a repeatable
    option whose values arrive as a list (for configs of which a command takes several)."""
    skipped = set(exclude)
    renamed = dict(flags or {})
    parameters = []
    for field, help_text in described_fields(config_cls):
        if field.name in skipped:
            continue
        default = field.default
        switch = isinstance(default, bool)
        names = renamed.get(field.name, (option_name(field.name),))
        if switch:
            names = (f"{names[0]}/--no-{names[0].removeprefix('--')}", *names[1:])
        shown = default not in (None, dataclasses.MISSING, (), "")
        option = typer.Option(*names, help=help_text, show_default=str(default) if shown else False, rich_help_panel=panel)
        value_type = _value_type(field)
        if isinstance(default, tuple) or (repeated and not switch):
            value_type = list[value_type]  # type: ignore[valid-type]
        if default is dataclasses.MISSING:
            annotation, fallback = Annotated[value_type, option], inspect.Parameter.empty
        else:
            annotation, fallback = Annotated[Optional[value_type], option], None  # noqa: UP007 (typer reads Optional)
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=fallback, annotation=annotation))
    return parameters


def given_values(config_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The values of ``config_cls``'s fields that the user gave (not None, not an empty repeatable
    option), to pass to its constructor."""
    names = {field.name for field, _ in described_fields(config_cls)}
    return {name: value for name, value in values.items() if name in names and value is not None and value != []}
