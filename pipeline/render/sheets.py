"""Images on a page: thumbnail grids with captions (the report's galleries) and a self-contained contact sheet
(`pipeline neighbors --out`). Every caption is HTML-escaped; images are embedded data URIs, nothing fetched."""
from __future__ import annotations

import html
import re

import numpy as np

from pipeline.render.thumbs import thumbnail

# small images (Fashion-MNIST's 28 px) are shown at 64 px without blur; photos at their thumbnail size
CSS = (".thumbs{display:flex;flex-wrap:wrap;gap:6px;margin:0.5em 0}.thumb{margin:0;width:100px;font-size:0.72em;"
       "color:#333;text-align:center;overflow-wrap:anywhere}.thumb img{width:96px;height:96px;object-fit:contain;"
       "background:#f4f4f4;display:block;margin:0 auto}.thumb img.px{image-rendering:pixelated}"
       ".thumb.wrong figcaption{color:#b00}.thumb.query{border-right:2px solid #888;padding-right:6px}")


DATA_URI = re.compile(r"data:image/(png|jpeg);base64,[A-Za-z0-9+/]*={0,2}")


def thumb(uri: str, caption: str, wrong: bool = False, extra: str = "") -> str:
    """One image and its caption. `uri` from `render.thumbs.thumbnail`: small PNGs are drawn pixelated."""
    if not DATA_URI.fullmatch(uri):  # it may be read back from a file: an embedded image and nothing else
        raise ValueError("not an embedded PNG or JPEG image")
    px = ' class="px"' if uri.startswith("data:image/png") else ""
    cls = "thumb" + (" wrong" if wrong else "") + (f" {extra}" if extra else "")
    return (f'<figure class="{cls}"><img{px} src="{uri}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def grid(items: list[str]) -> str:
    return f'<div class="thumbs">{"".join(items)}</div>'


def contact_sheet(title: str, queries: list[tuple[str, np.ndarray]],
                  found: list[list[tuple[np.ndarray, str, float]]]) -> str:
    """A page: each query image, then its neighbours (image, label, distance), one row per query."""
    rows = []
    for (name, img), neigh in zip(queries, found):
        items = [thumb(thumbnail(img), name.replace("\\", "/").rsplit("/", 1)[-1], extra="query")]
        items += [thumb(thumbnail(im), f"{label} ({d:.3f})") for im, label, d in neigh]
        rows.append(grid(items))
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>body{{font-family:system-ui,sans-serif;margin:1em}}{CSS}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Each row: a query image, then its nearest training images (label, "
            f"cosine distance).</p>" + "\n".join(rows) + "</body></html>\n")
