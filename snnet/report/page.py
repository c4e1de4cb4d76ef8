"""One self-contained HTML page: the data as inline JSON, hand-written script and styles inline.

The page needs no network when it is opened (no CDN, no fonts, no images from elsewhere): the
template, the shared script (``assets/common.js``: scatter plot, sortable table, formats) and the
page's own script (``assets/<kind>.js``) are package data, copied into the file.
"""

from __future__ import annotations

import datetime
import json
from html import escape
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..io.paths import write_text

ASSETS = Path(__file__).with_name("assets")
KINDS = ("sweep", "lab", "compose")


def _json_for_script(data: Any) -> str:
    # '<' escaped so that no string in the data can close the <script> element ('</script>', '<!--')
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def page_html(kind: str, title: str, data: Mapping[str, Any]) -> str:
    """The page of ``kind`` (``sweep``, ``lab`` or ``compose``) showing ``data`` (JSON-able)."""
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}: one of {', '.join(KINDS)}")
    parts = {
        "title": escape(title),
        "kind": kind,
        "css": (ASSETS / "page.css").read_text(encoding="utf-8"),
        "common": (ASSETS / "common.js").read_text(encoding="utf-8"),
        "script": (ASSETS / f"{kind}.js").read_text(encoding="utf-8"),
        "data": _json_for_script(dict(data)),
    }
    html = (ASSETS / "page.html").read_text(encoding="utf-8")
    # one pass over the template's own placeholders: nothing inserted is scanned again
    pieces = html.split("{{")
    out = [pieces[0]]
    for piece in pieces[1:]:
        key, _, rest = piece.partition("}}")
        out.append(parts[key] + rest)
    return "".join(out)


def write_page(path: str | Path, kind: str, title: str, data: Mapping[str, Any]) -> Path:
    """:func:`page_html` written to ``path`` atomically; returns the path."""
    write_text(path, page_html(kind, title, data))
    return Path(path)


def written_at() -> str:
    """Now, as the pages say when they were written: ``2026-12-04 21:30 UTC``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def file_time(path: str | Path) -> str:
    """A file's modification time as :func:`written_at` writes times ('' when it is gone)."""
    try:
        stamp = Path(path).stat().st_mtime
    except OSError:
        return ""
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def meta_pairs(pairs: Sequence[tuple[str, Any]]) -> list[list[str]]:
    """The page header's ``(what, value)`` lines, empty values left out."""
    return [[str(k), str(v)] for k, v in pairs if v not in (None, "")]
