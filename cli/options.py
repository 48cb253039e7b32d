"""Typer options generated from config dataclasses: one option per field declared with ``param()``,
its help and range from the field, so no option is copied by hand into a command line."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Optional

import typer

from annotators.base import described_fields

__all__ = ["config_parameters", "option_name", "given_values"]


def option_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def _value_type(field: dataclasses.Field) -> Any:
    choices = field.metadata.get("choices")
    if choices:
        return Literal[tuple(choices)]  # type: ignore[valid-type]
    if field.default is None:  # an optional value: its type is the annotation's non-None part
        hint = str(field.type)
        return int if hint.startswith("int") else float if hint.startswith("float") else str
    return type(field.default)


def config_parameters(config_cls: type, *, exclude: Iterable[str] = (), panel: str | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per ``param()`` field of ``config_cls`` (a dataclass), with its help,
    range and default shown. Options default to None, so that only what the user typed overrides the
    config's own defaults (see :func:`given_values`)."""
    skipped = set(exclude)
    parameters = []
    for field, help_text in described_fields(config_cls):
        if field.name in skipped:
            continue
        default = field.default
        flag = option_name(field.name) + (f"/--no-{field.name.replace('_', '-')}" if isinstance(default, bool) else "")
        option = typer.Option(flag, help=help_text, show_default=str(default) if default is not None else False, rich_help_panel=panel)
        annotation = Annotated[Optional[_value_type(field)], option]  # noqa: UP007 (typer reads Optional)
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return parameters


def given_values(config_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The values of ``config_cls``'s fields that the user gave (not None), to pass to its constructor."""
    names = {field.name for field, _ in described_fields(config_cls)}
    return {name: value for name, value in values.items() if name in names and value is not None}
