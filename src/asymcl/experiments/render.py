"""The report document: tables built from the numbers, and blocks rendered to Markdown and HTML.

A document is a list of blocks ``(kind, payload)``: ``("h2", text)``, ``("p", text)``,
``("table", Table)``, ``("img", (path, alt))``, ``("pre", text)`` and the like.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from asymcl.experiments.report_numbers import Difference, SettingNumbers, split_title
from asymcl.experiments.runs import row_display as display
from asymcl.experiments.selection import format_params, method_order


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    bold: set[tuple[int, int]] = field(default_factory=set)


def to_markdown(blocks: Iterable[tuple]) -> str:
    out = []
    for kind, *payload in blocks:
        if kind.startswith("h"):
            out.append("#" * int(kind[1]) + " " + payload[0])
        elif kind == "p":
            out.append(payload[0])
        elif kind == "pre":
            out.append("```\n" + payload[0].rstrip() + "\n```")
        elif kind == "img":
            out.append(f"![{payload[1]}]({payload[0]})")
        elif kind == "table":
            table: Table = payload[0]
            lines = ["| " + " | ".join(table.header) + " |", "|" + "---|" * len(table.header)]
            for i, row in enumerate(table.rows):
                cells = [f"**{c}**" if (i, j) in table.bold else c for j, c in enumerate(row)]
                lines.append("| " + " | ".join(cells) + " |")
            out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def _inline_html(text: str) -> str:
    escaped = html.escape(text)
    escaped = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", escaped)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", escaped)


def to_html(blocks: Iterable[tuple], title: str) -> str:
    out = [
        f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
        "text-align:right}td:first-child,th:first-child{text-align:left}img{max-width:100%}"
        "pre{background:#f4f4f4;padding:.6em;overflow-x:auto}</style></head><body>",
    ]
    for kind, *payload in blocks:
        if kind.startswith("h"):
            out.append(f"<{kind}>{html.escape(payload[0])}</{kind}>")
        elif kind == "p":
            out.append(f"<p>{_inline_html(payload[0])}</p>")
        elif kind == "pre":
            out.append(f"<pre>{html.escape(payload[0])}</pre>")
        elif kind == "img":
            out.append(f"<p><img src='{html.escape(payload[0])}' alt='{html.escape(payload[1])}'></p>")
        elif kind == "table":
            table = payload[0]
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in table.header) + "</tr>")
            for i, row in enumerate(table.rows):
                cells = "".join(
                    f"<td><b>{html.escape(c)}</b></td>" if (i, j) in table.bold else f"<td>{html.escape(c)}</td>"
                    for j, c in enumerate(row)
                )
                out.append(f"<tr>{cells}</tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def _fmt_pct(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "n/a"
    return f"{mean * 100:.1f} ± {std * 100:.1f}"


def _column_title(column: str, columns: Sequence[str]) -> str:
    split, metric = column.split(".")
    return f"{split_title(split, any(c.startswith('test_imbalanced.') for c in columns))} {metric.upper()}"


def results_table(numbers: SettingNumbers) -> Table:
    header = ["method", "chosen hyperparameters", "seeds"] + [
        _column_title(c, numbers.columns) for c in numbers.columns
    ]
    table = Table(header, [])
    methods = list(numbers.table)
    for method in methods:
        row = numbers.table[method]
        cells = [display(method), format_params(row.params), str(len(row.seeds))]
        cells += [_fmt_pct(row.scores[c].mean, row.scores[c].std, row.scores[c].n) for c in numbers.columns]
        table.rows.append(cells)
    for j, column in enumerate(numbers.columns):
        means = [numbers.table[m].scores[column].mean for m in methods]
        finite = [v for v in means if not math.isnan(v)]
        if not finite:
            continue
        best = round(max(finite) * 100, 1)
        for i, value in enumerate(means):
            if not math.isnan(value) and round(value * 100, 1) == best:
                table.bold.add((i, j + 3))
    return table


def summary_table(all_numbers: Sequence[SettingNumbers]) -> Table | None:
    """One row per setting: each method's UA on the main test split (the first present)."""
    methods = sorted({m for numbers in all_numbers for m in numbers.table}, key=method_order)
    if not methods:
        return None
    table = Table(["setting", "test split"] + [display(m) for m in methods], [])
    for numbers in all_numbers:
        tests = [c for c in numbers.columns if c.endswith(".ua") and not c.startswith("val.")]
        if not tests:
            continue
        column = tests[0]
        cells = [numbers.label, _column_title(column, numbers.columns).rsplit(" ", 1)[0]]
        means = []
        for method in methods:
            row = numbers.table.get(method)
            cell = None if row is None else row.scores.get(column)
            means.append(float("nan") if cell is None else cell.mean)
            cells.append("–" if cell is None else _fmt_pct(cell.mean, cell.std, cell.n))
        table.rows.append(cells)
        finite = [m for m in means if not math.isnan(m)]
        if finite:
            best = round(max(finite) * 100, 1)
            for j, mean in enumerate(means):
                if not math.isnan(mean) and round(mean * 100, 1) == best:
                    table.bold.add((len(table.rows) - 1, j + 2))
    return table if table.rows else None


def _difference_text(d: Difference) -> str:
    if d.n == 0:
        return "n/a"
    text = f"{d.mean * 100:+.1f}"
    return text + (f" [{d.low * 100:+.1f}, {d.high * 100:+.1f}]" if d.n > 1 else " (no CI)")


def _holm_p(d: Difference) -> str:
    return f"{d.p_holm:.3g}" if d.p_holm is not None else "–"


def comparison_table(numbers: SettingNumbers) -> Table | None:
    from asymcl.experiments.claims import significant

    if not numbers.comparisons:
        return None
    table = Table(
        ["AFCL vs", "split", "paired seeds", "Δ UA [raw 95% CI]", "Δ WA [raw 95% CI]", "Holm p (UA, WA)", "on UA"], []
    )
    for method, comparison in numbers.comparisons.items():
        for split in [c.split(".")[0] for c in numbers.columns if c.endswith(".ua") and not c.startswith("val")]:
            ua, wa = comparison.differences[f"{split}.ua"], comparison.differences[f"{split}.wa"]
            if ua.n < 2:
                verdict = "too few seeds"
            elif significant(ua):
                verdict = "AFCL better" if ua.mean > 0 else "AFCL worse"
            else:
                verdict = "no clear difference"
            if not ua.in_family and ua.n >= 2:
                verdict += " (raw)"
            title = split_title(split, any(c.startswith("test_imbalanced.") for c in numbers.columns))
            table.rows.append(
                [
                    display(method),
                    title,
                    str(ua.n),
                    _difference_text(ua),
                    _difference_text(wa),
                    f"{_holm_p(ua)}, {_holm_p(wa)}" if ua.in_family or wa.in_family else "not in family",
                    verdict,
                ]
            )
    return table
