"""Charts of the transparency report as inline SVG, drawn on the server: no script, no
library, nothing loaded. Colours come from the console's stylesheet classes (`bar`, `c0`...)."""

from __future__ import annotations

from collections.abc import Sequence

from pipeline.api.console.html import Markup, esc, join, tag


def bars(rows: Sequence[tuple[str, int, str]], title: str, width: int = 720) -> Markup:
    """One horizontal bar per (label, value, note), scaled to the largest value."""
    if not rows:
        return Markup("<p>Nothing yet.</p>")
    top = max(value for _, value, _ in rows) or 1
    label_w, bar_w, step = 230, width - 230 - 160, 26
    parts = []
    for i, (label, value, note) in enumerate(rows):
        y, w = 8 + i * step, round(bar_w * value / top)
        parts += [
            tag("text", label, x=0, y=y + 14),
            tag("rect", "", class_="bar", x=label_w, y=y, width=max(w, 1), height=18),
            tag("text", f"{value}" + (f" · {note}" if note else ""), x=label_w + w + 6, y=y + 14),
        ]
    height = 16 + step * len(rows)
    return _svg(title, width, height, parts)


def stacked(parts: Sequence[tuple[str, int]], title: str, width: int = 720) -> Markup:
    """One bar split into (label, count) shares, with a legend; colours c0, c1, ... in order."""
    total = sum(n for _, n in parts)
    if not total:
        return Markup("<p>Nothing yet.</p>")
    x, shapes, legend = 0.0, [], []
    for i, (label, n) in enumerate(parts):
        w = width * n / total
        if n:
            shapes.append(
                tag(
                    "rect",
                    tag("title", f"{label}: {n}"),
                    class_=f"c{i}",
                    x=f"{x:.1f}",
                    y=0,
                    width=f"{w:.1f}",
                    height=28,
                )
            )
        x += w
        legend.append(tag("li", join([tag("span", "", class_=f"swatch c{i}"), f"{label}: {n} ({n / total:.0%})"])))
    return join([_svg(title, width, 28, shapes), tag("ul", join(legend), class_="legend")])


def _svg(title: str, width: int, height: int, parts: Sequence[Markup]) -> Markup:
    body = join([tag("title", title), *parts])
    return Markup(
        f'<svg class="chart" role="img" aria-label="{esc(title)}" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )
