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


def write(head: list[str], rows: list[list]) -> str:
    """A CSV (header, rows) with every cell passed through `cell`."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([cell(h) for h in head])
    w.writerows([[cell(c) for c in r] for r in rows])
    return buf.getvalue()
