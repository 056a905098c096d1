"""Where the CLI writes, and in which form: every command's output goes through here.

* ``console`` (stdout: results) and ``err_console`` (stderr: progress bars, spinners, "No ...
  found."), so that stdout stays clean for ``-o json|yaml`` and for pipes.
* :func:`emit` - a result as JSON, YAML, or a table of :class:`Column` s.
* Tables have two forms. In a terminal: a rich table (:class:`FitTable`) whose ids fold onto
  more lines when the terminal is narrow (an id is never cut to ``abc…``). When stdout is not a terminal, or with
  ``-o plain``: kubectl's layout - a header in capitals, left-aligned columns three spaces
  apart, one token per cell where it can be, no colour, no box drawing, nothing truncated.
  ``-o wide`` adds each table's wide columns, in either form.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Annotated, Any, Literal

import typer
from rich import box
from rich.box import Box
from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.measure import Measurement
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)
BAR = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())



class TableOutput(StrEnum):
    """``-o`` of the commands that print a table."""

    table = "table"  # rich in a terminal, plain columns when stdout is not one
    plain = "plain"
    wide = "wide"  # more columns
    json = "json"
    yaml = "yaml"


class DocOutput(StrEnum):
    """``-o`` of the commands that print one document (describe, top, logs)."""

    table = "table"
    json = "json"
    yaml = "yaml"


TableOutputOpt = Annotated[
    TableOutput,
    typer.Option("--output", "-o", help="table: rich in a terminal, plain columns when piped; wide: more columns"),
]
OutputOpt = Annotated[DocOutput, typer.Option("--output", "-o", help="table | json | yaml")]

Row = dict[str, Any]
PLAIN_GAP = "   "  # kubectl's tabwriter padding


def setup_logging(level: str) -> None:
    """Logging is configured here only, by the commands that run servers."""
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


@dataclass(frozen=True)
class Column:
    """One column of a table: its header and its cell as plain text (the same text in both forms)."""

    header: str
    cell: Callable[[Row], str]
    style: Callable[[Row], str] | None = None  # colour of the cell, terminal only
    justify: Literal["left", "right"] = "left"  # terminal only; plain columns are all left-aligned
    wide: bool = False  # only with -o wide
    graphic: Callable[[Row], RenderableType] | None = None  # a terminal-only column (a bar); not in plain output
    flex: bool = False  # an id, a list of ids or free text: in a narrow terminal it folds before the others
    graphic_width: int = 24


def stdout_is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # replaced or closed stdout
        return False


def shown(columns: Sequence[Column], *, wide: bool) -> list[Column]:
    return [c for c in columns if wide or not c.wide]


def plain_table(columns: Sequence[Column], rows: Sequence[Row]) -> str:
    """Aligned columns, kubectl style: every cell in full, columns padded to their widest cell."""
    cols = [c for c in columns if c.graphic is None]
    grid = [[c.header for c in cols]] + [[c.cell(r) for c in cols] for r in rows]
    widths = [max(cell_len(line[k]) for line in grid) for k in range(len(cols))]
    out = []
    for line in grid:
        padded = [v + " " * (w - cell_len(v)) for v, w in zip(line, widths, strict=True)]
        out.append(PLAIN_GAP.join(padded).rstrip())
    return "\n".join(out) + "\n"


FLEX_MIN = 8  # a flexible column folds no narrower than this (or its header's longest word)


@dataclass(frozen=True)
class Layout:
    box: Box
    edge: bool
    pad: int

    def overhead(self, n: int) -> int:
        """Columns of a table of ``n`` columns that are not cell text: padding and rules."""
        return (n - 1) + (2 if self.edge else 0) + 2 * self.pad * n - (0 if self.edge else 2 * self.pad)


# boxed as rich draws tables; then lighter (a rule under the header, columns 3 then 1 apart)
LAYOUTS = (Layout(box.HEAVY_HEAD, True, 1), Layout(box.SIMPLE_HEAD, False, 1), Layout(box.SIMPLE_HEAD, False, 0))


class FitTable:
    """A rich table laid out for the width it is given when it is drawn (a terminal, a panel).

    Short columns (states, counts, sizes) keep their width and never wrap; the flexible ones
    (ids, lists of ids, reasons) share what is left and fold their text onto more lines. The
    first of :data:`LAYOUTS` where that fits is used; then the same with the short columns'
    headers stacked a word a line; when none fits, every column folds. Either way no cell is cut
    or ellipsised."""

    def __init__(self, columns: Sequence[Column], rows: Sequence[Row], *, title: str | None = None) -> None:
        self.columns = list(columns)
        self.rows = list(rows)
        self.title = title
        self.cells = [[c.cell(r) if c.graphic is None else "" for c in self.columns] for r in self.rows]

    def _header(self, k: int, stacked: bool) -> str:
        """Column ``k``'s header; ``stacked`` puts each word of a short column's header on a line
        of its own (``LAST USED`` over two lines) to spare width before any cell has to fold."""
        c = self.columns[k]
        return "\n".join(c.header.split()) if stacked and not c.flex and c.graphic is None else c.header

    def _natural(self, k: int, stacked: bool = False) -> int:
        c = self.columns[k]
        head = max(cell_len(w) for w in self._header(k, stacked).splitlines())
        if c.graphic is not None:
            return max(c.graphic_width, head)
        return max([head, *(cell_len(line[k]) for line in self.cells)])

    def min_text_width(self, stacked: bool = False) -> int:
        """Text columns needed: the short columns' full width, each flexible one's minimum."""
        need = 0
        for k, c in enumerate(self.columns):
            natural = self._natural(k, stacked)
            if c.flex and c.graphic is None:
                need += min(natural, max([FLEX_MIN, *(cell_len(w) for w in c.header.split())]))
            else:
                need += natural
        return need

    def _layout(self, width: int) -> tuple[Layout, bool] | None:
        """The first layout that fits ``width`` with whole headers, else with stacked ones."""
        n = len(self.columns)
        for stacked in (False, True):
            need = self.min_text_width(stacked)
            for lay in LAYOUTS:
                if need + lay.overhead(n) <= width:
                    return lay, stacked
        return None

    def table(self, width: int) -> Table:
        chosen = self._layout(width)
        fold_all = chosen is None
        lay, stacked = chosen or (LAYOUTS[-1], True)
        t = Table(title=self.title, title_justify="left", box=lay.box, show_edge=lay.edge, pad_edge=lay.edge, padding=(0, lay.pad))
        for k, c in enumerate(self.columns):
            if c.graphic is not None:
                t.add_column(c.header, no_wrap=True)
            else:
                t.add_column(self._header(k, stacked), justify=c.justify, overflow="fold", no_wrap=not (c.flex or fold_all))
        for r, line in zip(self.rows, self.cells, strict=True):
            cells: list[RenderableType] = []
            for c, text in zip(self.columns, line, strict=True):
                cells.append(c.graphic(r) if c.graphic is not None else Text(text, style=c.style(r) if c.style else ""))
            t.add_row(*cells)
        return t

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.table(options.max_width)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.table(options.max_width))


def rich_table(columns: Sequence[Column], rows: Sequence[Row], *, title: str | None = None) -> FitTable:
    return FitTable(columns, rows, title=title)


def print_table(columns: Sequence[Column], rows: Sequence[Row], output: str = "table", *, what: str = "items") -> None:
    """``rows`` as a table in the form ``output`` asks for (table | plain | wide), kubectl's
    "No ... found." on stderr when there are none."""
    cols = shown(columns, wide=output == "wide")
    if not rows:
        err_console.print(f"No {what} found.")
        return
    if output == "plain" or not stdout_is_terminal():
        sys.stdout.write(plain_table(cols, rows))
        sys.stdout.flush()
    else:
        console.print(rich_table(cols, rows))


def emit_doc(data: Any, output: str) -> None:
    """``data`` as JSON (also the form for ``table`` where a document has no table) or YAML."""
    if output == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(data, sort_keys=False))
    else:
        sys.stdout.write(json.dumps(data, indent=2) + "\n")


def emit(data: Any, output: str, columns: Sequence[Column], rows: Sequence[Row] | None = None, *, what: str = "items") -> None:
    """One result: ``data`` as JSON / YAML, else ``rows`` (default: ``data``) as a table."""
    if output in ("json", "yaml"):
        emit_doc(data, output)
    else:
        print_table(columns, data if rows is None else rows, output, what=what)
