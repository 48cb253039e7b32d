"""Renaming a checkpoint's keys by rules: the shared step of the published-weights remaps."""

from __future__ import annotations

import re
from collections.abc import Callable

#: a regular expression and its replacement (a string with group references, or a function of the match)
Rule = tuple[str, "str | Callable[[re.Match[str]], str]"]


def rename_key(key: str, rules: tuple[Rule, ...]) -> str:
    """``key`` renamed by the first of ``rules`` that matches it; unchanged when none does (left for
    the strict load to report)."""
    for pattern, replacement in rules:
        new, count = re.subn(pattern, replacement, key)
        if count:
            return new
    return key
