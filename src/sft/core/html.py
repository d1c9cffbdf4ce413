"""The one small HTML kit of every page sft writes (report, audit, compare): escaping, embedded PNGs, tables and the
page frame. Pages are single files with their images inline, so they open offline and can be mailed."""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from matplotlib.figure import Figure
from PIL import Image


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
