"""SVG documents (from Graphviz or matplotlib) made fit to inline in HTML."""

from __future__ import annotations

import re


def inline_svg(svg: str) -> str:
    """The <svg> element alone (no XML declaration, DOCTYPE or comments), with
    its fixed width and height dropped so CSS scales it by its viewBox."""
    start = svg.index("<svg")
    element = svg[start:]
    element = re.sub(r"<!--.*?-->", "", element, flags=re.S)
    head_end = element.index(">")
    head = re.sub(r'\s(width|height)="[^"]*"', "", element[:head_end])
    return head + element[head_end:]
