"""CSV for data strings: class names, file names and feature-set names come from users' folders, and a
spreadsheet runs a cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return as a formula. Each
such text cell is prefixed with `'` (OWASP's advice for CSV injection); numbers are written as they are. The
real names stay in the JSON files."""
from __future__ import annotations

import csv
import io

_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def cell(value) -> str | int | float:
    """A value as a CSV cell a spreadsheet shows literally: text that would start a formula gets a leading `'`;
    numbers (and text that is one, such as "-0.25") are kept."""
    if isinstance(value, bool) or not isinstance(value, str):
        return value if isinstance(value, int | float) else ("" if value is None else cell(str(value)))
    if value.startswith(_TRIGGERS):
        try:
            float(value)
            return value
        except ValueError:
            return "'" + value
    return value


def write(head: list[str], rows) -> str:
    """A CSV (header, rows) with every cell passed through `cell`."""
    buf = io.StringIO()
    stream(buf, head, rows)
    return buf.getvalue()


def stream(f, head: list[str], rows) -> None:
    """Write the CSV to the text file `f` row by row (a large table is never one string in memory)."""
    w = csv.writer(f)
    w.writerow([cell(h) for h in head])
    for r in rows:
        w.writerow([cell(c) for c in r])
