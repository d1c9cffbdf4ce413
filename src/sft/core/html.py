"""The one small HTML kit of every page sft writes (report, audit, compare): escaping, embedded PNGs, tables and the
page frame. Pages are single files with their images inline, so they open offline and can be mailed."""

from __future__ import annotations

import base64
import html
import io
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image


# The style of the reports whose worst samples are cards of a thumbnail or a text (regression, multi-label)
CARDS_CSS = """body{font:14px/1.45 system-ui,sans-serif;margin:2em auto;max-width:1150px;color:#222}
table{border-collapse:collapse;margin:.5em 0}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}
td:first-child,th:first-child{text-align:left}.grid{display:flex;flex-wrap:wrap;gap:10px}
.card{border:1px solid #ccc;border-radius:6px;padding:6px;font-size:12px;max-width:360px}
.card img{width:112px;height:112px;image-rendering:pixelated}figure img{max-width:100%}nav a{margin-right:1em}"""


def evaluation_page(results: dict, what: str, sections: dict[str, str], titles: dict[str, str]) -> str:
    """report.html of an evaluation (results.json's run_dir and data): a header naming the data and `what` it holds,
    a navigation bar, then each of `sections` (id -> trusted markup) under its title, in the style of CARDS_CSS."""
    body = "".join(f'<section id="{s}"><h2>{titles[s]}</h2>{sections[s]}</section>' for s in titles)
    nav = "".join(f'<a href="#{s}">{titles[s]}</a>' for s in titles)
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    data = results["data"]
    return page(f'sft evaluation: {Path(results["run_dir"]).name}',
                f'<h1>Evaluation of {esc(results["run_dir"])}</h1><p>Data: {esc(data["source"]["path"])} '
                f'({data["samples"]} samples, {esc(what)}). Written {when} by <code>sft eval</code>.</p>'
                f'<nav>{nav}</nav>{body}', CARDS_CSS)


def esc(x) -> str:
    return html.escape(str(x))


def png_uri(image: Figure | Image.Image | np.ndarray) -> str:
    """A data: URI of a matplotlib Figure, PIL image or uint8 array, as PNG."""
    buf = io.BytesIO()
    if isinstance(image, Figure):
        image.savefig(buf, format="png", dpi=80)
    else:
        (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def img(image, alt: str = "") -> str:
    return f'<img src="{png_uri(image)}" alt="{esc(alt)}">'


def thumbnail(image: Image.Image, side: int = 112) -> Image.Image:
    """An image scaled to fit a `side` px square (nearest neighbour when enlarged: small images stay crisp)."""
    image = image.copy()
    scale = side / max(image.size)
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.NEAREST if scale > 1 else Image.BILINEAR)


def table(header: list[str], rows: list[list], attrs: str = "") -> str:
    cell = lambda v: f"{v:.4f}" if isinstance(v, float) else esc(v)  # noqa: E731
    return (f"<table{' ' + attrs if attrs else ''}><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows) + "</table>")


def page(title: str, body: str, css: str = "") -> str:
    """A whole HTML document: `body` is trusted markup, `title` is escaped."""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{css}</style></head><body>{body}</body></html>\n")
