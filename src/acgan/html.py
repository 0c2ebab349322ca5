"""The one HTML page scaffold of the reports: self-contained pages (pictures inlined as
base64), so a page opens anywhere, including as a single KFP HTML artifact."""

from __future__ import annotations

import base64
import html
from pathlib import Path

BASE_CSS = """body { font-family: system-ui, sans-serif; margin: 2em; max-width: 70em; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; }
figure { display: inline-block; vertical-align: top; margin: 0.5em; }
img { image-rendering: pixelated; max-width: 100%; }
dl.legend dt { float: left; clear: left; width: 9em; } dl.legend dd { margin-left: 9.5em; }
"""


def esc(text: object) -> str:
    return html.escape(str(text))


def figure(caption: str, png: Path, heading: str | None = None) -> str:
    """A ``<figure>`` with the PNG file inlined and its caption (and a heading above)."""
    data = base64.b64encode(Path(png).read_bytes()).decode("ascii")
    top = f"<h3>{esc(heading)}</h3>" if heading else ""
    return (
        f"<figure>{top}<img alt='{esc(heading or caption)}' src='data:image/png;base64,{data}'>"
        f"<figcaption>{esc(caption)}</figcaption></figure>"
    )


def page(title: str, body: str, css: str = "") -> str:
    """A complete page: ``title``, the shared style plus ``css``, and ``body`` (HTML)."""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}'
        f"</title>\n<style>\n{BASE_CSS}{css}</style></head><body>\n{body}\n</body></html>\n"
    )
