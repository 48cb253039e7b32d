"""Typer options generated from config dataclasses: one option per field declared with ``param()``,
its help, range and default from the field, so no option is copied by hand into a command line.

Also the command and group classes every CLI uses, for help that reads conventionally in 80
columns: ``INPUT`` rather than typer's ``{INPUT}`` in the usage line, no ``<bool>`` after flags
(``--help`` included), ``[default: 100]`` rather than ``[default: (100)]``, and option names that
are never cut (the help column alone wraps).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Iterable
from typing import Annotated, Any, Literal, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Table
from rich.text import Text
from typer.core import TyperArgument, TyperCommand, TyperGroup

from annotators.base import described_fields

__all__ = ["Command", "Group", "config_parameters", "option_name", "given_values"]


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


def _number(value: float) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _help(field: dataclasses.Field) -> str:
    """The field's help, its range or choices and its default, as the help panel shows them."""
    meta, default = field.metadata, field.default
    bounds = [f"{word} {_number(meta[key])}" for key, word in (("ge", "at least"), ("gt", "over"), ("le", "at most"), ("lt", "under")) if meta.get(key) is not None]
    if meta.get("ge") is not None and meta.get("le") is not None:
        bounds = [f"{_number(meta['ge'])} to {_number(meta['le'])}"]
    if meta.get("choices"):
        bounds = ["one of " + ", ".join(map(str, meta["choices"]))]
    text = meta["help"] + (f" ({'; '.join(bounds)})" if bounds else "")
    if default is True:
        text += " [default: on]"
    elif default is not None and default is not False:
        text += f" [default: {default}]"
    return escape(text)  # the help is rich markup: "[default: 1]" must not read as a style


def config_parameters(config_cls: type, *, exclude: Iterable[str] = (), panel: str | None = None) -> list[inspect.Parameter]:
    """One keyword parameter per ``param()`` field of ``config_cls`` (a dataclass), with its help,
    range and default shown. Options default to None, so that only what the user typed overrides the
    config's own defaults (see :func:`given_values`). A flag is the one switch that changes its
    default: ``--name`` for a field that is off by default, ``--no-name`` for one that is on."""
    skipped = set(exclude)
    parameters = []
    for field, _ in described_fields(config_cls):
        if field.name in skipped:
            continue
        flag = f" /--no-{field.name.replace('_', '-')}" if field.default is True else option_name(field.name)
        metavar = "<choice>" if field.metadata.get("choices") else None  # the choices are listed in the help
        option = typer.Option(flag, help=_help(field), metavar=metavar, show_default=False, rich_help_panel=panel)
        annotation = Annotated[Optional[_value_type(field)], option]  # noqa: UP007 (typer reads Optional)
        parameters.append(inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    return parameters


def given_values(config_cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """The values of ``config_cls``'s fields that the user gave (not None), to pass to its constructor."""
    names = {field.name for field, _ in described_fields(config_cls)}
    return {name: value for name, value in values.items() if name in names and value is not None}


def _untyped_flags(params: Iterable[Any]) -> None:
    """Flags take no value: no type label after them (typer shows ``<bool>``)."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def _names(param: Any, ctx: Any) -> str:
    """``--output, -o <path>``: the option's names and what it takes (nothing for a flag)."""
    if isinstance(param, TyperArgument):
        return param.metavar or (param.name or "").upper()
    names = ", ".join(sorted([*param.opts, *param.secondary_opts], key=lambda name: (not name.startswith("--"), name in param.secondary_opts)))
    if param.is_flag or param.count:
        return names
    if param.metavar:
        return f"{names} {param.metavar}"
    # typer's own label (<int>, <path>); older typer, on click, has the click type's name instead
    return f"{names} {param.display_type(ctx) if hasattr(param, 'display_type') else param.type.name.upper()}"


def _param_help(param: Any) -> Text:
    text = Text.from_markup(param.help or "")
    default = param.show_default if isinstance(param.show_default, str) else param.default if param.show_default else None
    if default not in (None, False, "", ()) and not param.is_flag:
        text.append(f" [default: {default}]", style="dim")
    if param.required:
        text.append(" [required]", style="dim red")
    return text


class Command(TyperCommand):
    """A typer command whose help reads conventionally (see the module docstring). Its help is
    rendered here, from click's parameters, in typer's panels: one column of names that is never
    cut, and one of help that wraps (a word too long for it folds)."""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = _names(param, ctx) + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def format_help(self, ctx: Any, formatter: Any) -> None:
        console = Console(highlight=False)
        console.print(Padding(Text(self.get_usage(ctx).strip(), style="bold"), (1, 1, 0, 1)))
        if self.help:
            paragraphs = [" ".join(part.split()) for part in inspect.cleandoc(self.help).split("\n\n")]
            console.print(Padding(Text.from_markup("\n\n".join(paragraphs)), (1, 1, 1, 1)))
        panels: dict[str, list[Any]] = {}
        for param in self.get_params(ctx):
            if getattr(param, "hidden", False):
                continue
            default_panel = "Arguments" if isinstance(param, TyperArgument) else "Options"
            panels.setdefault(getattr(param, "rich_help_panel", None) or default_panel, []).append(param)
        for title in sorted(panels, key=lambda t: {"Arguments": 0, "Options": 1}.get(t, 2)):
            grid = Table.grid(padding=(0, 2))
            grid.add_column(no_wrap=True, style="bold cyan")
            grid.add_column(overflow="fold", ratio=1)
            for param in panels[title]:
                grid.add_row(("* " if param.required else "  ") + _names(param, ctx), _param_help(param))
            console.print(Panel(grid, title=title, title_align="left", border_style="dim"))
        if self.epilog:
            console.print(Padding(Text.from_markup(inspect.cleandoc(self.epilog)), (0, 1)))


class Group(TyperGroup):
    """A typer group whose help reads conventionally (see the module docstring)."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untyped_flags(self.get_params(ctx))
        super().format_help(ctx, formatter)
