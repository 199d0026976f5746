"""Markdown for data strings: class names, feature-set names and parameters come from users' folders and
files, so each is escaped before it goes into a table, a heading or an image's alt text."""
from __future__ import annotations

import re

# always special inline; `_` only where it can open or close emphasis (not inside a word like lite_0)
_SPECIAL = re.compile(r"([\\`*\[\]<>|$~]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


def escape(text) -> str:
    """`text` shown literally by a Markdown renderer (CommonMark, GitHub): inline specials backslash-escaped,
    line breaks folded to spaces (nothing can start a block)."""
    return _SPECIAL.sub(r"\\\1", " ".join(str(text).split()))


def table(head: list, rows: list[list]) -> str:
    """A pipe table whose every cell (header too) is escaped data."""
    lines = ["| " + " | ".join(escape(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(escape(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)
