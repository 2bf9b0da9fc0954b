"""The compliance report's charts: SVG drawn on the server with pygal. No Flask here.

Every chart is a horizontal bar chart of one series: the bars are told apart by their
labels, each bar carries its value in figures, and the fill is a light grey with a black
outline, so a chart reads the same printed in black and white (no colour carries meaning).

pygal styles its SVG with a `<style>` element and expects its JavaScript for tooltips. The
desk's pages forbid inline styles and scripts (Content-Security-Policy `style-src 'self'`,
`script-src 'self'`), and WeasyPrint does not apply a `<style>` inside an inline SVG. So
the JavaScript is switched off (`js=[]`) and `flatten` rewrites what the stylesheet said
as SVG presentation attributes (`fill`, `stroke`, `font-size`, `text-anchor`), which both
a browser under that policy and WeasyPrint honour; the tooltip layer and the data
`<desc>` elements (for the JavaScript) are dropped.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET  # noqa: S405 - parses the SVG pygal just made, never input
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import pygal
from pygal.style import Style

from app.admin.report_figures import ALL_KINDS, ALL_PRIORITIES, Report

SVG_NS = "http://www.w3.org/2000/svg"
FONTS = '"Noto Sans", "DejaVu Sans", Arial, sans-serif'  # the print stack's Latin fonts (pdf.css)
WIDTH = 720
BAR_HEIGHT = 34
FRAME_HEIGHT = 96  # title, axis and margins
BAR_FILL = "#d0d0d0"
INK = "#000000"
GUIDE = "#9a9a9a"
TEXT_SIZE = {"title": "17", "value": "14"}
LABEL_SIZE = "14"
VALUE_GAP = 6  # between a bar's end and its figure


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    svg: str  # markup to place inline (no XML declaration, no script, no style element)


def _classes(element: ET.Element) -> set[str]:
    return set((element.get("class") or "").split())


def flatten(svg: str, title: str) -> str:
    """pygal's SVG with its stylesheet's effect written as attributes (see the module
    docstring), its tooltip layer and data descriptions removed, and named for assistive
    technology by `title`."""
    ET.register_namespace("", SVG_NS)
    root = ET.fromstring(svg)  # noqa: S314 - pygal's own output
    ns = f"{{{SVG_NS}}}"

    def walk(element: ET.Element, inherited: set[str]) -> None:
        for child in list(element):
            tag = child.tag.removeprefix(ns) if isinstance(child.tag, str) else ""
            classes = _classes(child)
            if tag in ("defs", "desc") or (tag == "g" and {"tooltip-overlay", "overlay"} & classes) or (
                    tag == "title" and element is not root):
                element.remove(child)
                continue
            context = inherited | classes
            if tag == "rect" and "background" in classes:
                child.set("fill", "#ffffff")
            elif tag == "rect":  # a bar
                child.set("fill", BAR_FILL)
                child.set("stroke", INK)
                child.set("stroke-width", "1")
            elif tag == "path":  # the value axis's zero line, and the guides
                child.set("fill", "none")
                child.set("stroke", INK if "axis" in classes else GUIDE)
                child.set("stroke-width", "1")
                if "axis" not in classes:
                    child.set("stroke-dasharray", "3,3")
            elif tag == "text":
                child.set("fill", INK)
                child.set("font-family", FONTS)
                size = next((TEXT_SIZE[c] for c in classes if c in TEXT_SIZE), LABEL_SIZE)
                child.set("font-size", size)
                if "title" in classes:
                    child.set("font-weight", "bold")
                if "value" in classes:  # after the bar's end, not astride it
                    child.set("font-weight", "bold")
                    child.set("text-anchor", "start")
                    child.set("x", f"{float(child.get('x', '0')) + VALUE_GAP:.1f}")
                if "text-anchor" not in child.attrib:
                    if {"axis", "y"} <= context:
                        child.set("text-anchor", "end")
                    elif "title" in classes or {"axis", "x"} <= context:
                        child.set("text-anchor", "middle")
            walk(child, context)

    walk(root, set())
    for key in ("id",):
        root.attrib.pop(key, None)
    root.set("role", "img")
    root.set("aria-label", title)
    root.set("class", "report-chart-svg")
    root.set("width", str(WIDTH))
    root.set("height", root.get("viewBox", "0 0 0 0").split()[-1])
    text = ET.tostring(root, encoding="unicode")
    return text


def bar_chart(key: str, title: str, bars: Sequence[tuple[str, float]],
              formatter: Callable[[float], str] = lambda v: f"{v:,.0f}") -> Chart | None:
    """A horizontal bar chart of `bars` (label, value), top to bottom in the order given;
    None when there is nothing to draw (no bars, or every value zero)."""
    if not bars or not any(value for _, value in bars):
        return None
    style = Style(
        font_family=FONTS, background="#ffffff", plot_background="#ffffff", foreground=INK,
        foreground_strong=INK, foreground_subtle=GUIDE, colors=(BAR_FILL,), opacity="1", opacity_hover="1",
        title_font_size=17, label_font_size=14, major_label_font_size=14, value_font_size=14,
    )
    top = max(value for _, value in bars)
    ticks = _ticks(top)
    chart = pygal.HorizontalBar(
        js=[], disable_xml_declaration=True, no_prefix=True, style=style, width=WIDTH,
        height=FRAME_HEIGHT + BAR_HEIGHT * len(bars), show_legend=False, print_values=True,
        print_values_position="top", truncate_label=-1, margin=12, margin_right=90, spacing=12,
        range=(0, ticks[-1]), y_labels=ticks, value_formatter=lambda v: f"{v:,g}", show_minor_y_labels=True,
    )
    chart.title = title
    # pygal draws the first label at the bottom: reversed, the list reads top to bottom.
    chart.x_labels = [label for label, _ in reversed(bars)]
    chart.add(title, [{"value": value, "formatter": formatter} for _, value in reversed(bars)])
    return Chart(key, title, flatten(chart.render(is_unicode=True), title))


def _ticks(top: float) -> list[float]:
    """Up to about six round steps from 0 to at least `top` (1, 2 or 5 times a power of ten)."""
    raw = top / 5
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    if step < 1 and top >= 1:
        step = 1
    return [step * i for i in range(math.ceil(top / step) + 1)] if top > 0 else [0, 1]


def _hours(seconds: float | None) -> float:
    return 0.0 if seconds is None else seconds / 3600


def charts(report: Report) -> dict[str, Chart]:
    """The report's charts by key (a section shows its own); a chart with nothing to show
    is left out."""
    made = [
        bar_chart("kinds", "Requests submitted, by kind", [(c.label, c.count) for c in report.by_kind]),
        bar_chart("statuses", "Requests by final status (all kinds)",
                  [(s, report.status_kind.row_total(i)) for i, s in enumerate(report.status_kind.rows)]),
        bar_chart("turnaround", "Median hours from submission to Delivered, by kind",
                  [(t.kind, _hours(t.delivered.median)) for t in report.turnaround
                   if t.priority == ALL_PRIORITIES or _only_priority(report, t.kind)],
                  formatter=lambda v: f"{v:,.1f} h"),
        bar_chart("targets", "Delivered within 4 hours (% of requests counted)",
                  [(t.group, 100 * t.share) for t in report.targets if t.share is not None],
                  formatter=lambda v: f"{v:.0f} %"),
        bar_chart("declines", "Requests declined, by reason (guideline 2.5)",
                  [(d.reason, d.declined) for d in report.declines]),
        bar_chart("failures", "Failed transfers, by reason", [(c.label, c.count) for c in report.failures]),
        bar_chart("cds", "CDs handed in, per drop-off site", [(c.site, c.cds) for c in report.cds[:-1]]),
    ]
    return {chart.key: chart for chart in made if chart is not None}


def _only_priority(report: Report, kind: str) -> bool:
    """True when the kind has one priority only in the period (so no "All priorities" row)."""
    return sum(1 for t in report.turnaround if t.kind == kind) == 1 and kind != ALL_KINDS
