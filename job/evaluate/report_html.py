"""report/report.html: report.md as one self-contained page (every picture inlined as a base64 data URI, the style
inline, no script, nothing fetched), which a browser opens as it is from a laptop or from S3."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1100px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
th { background: #f4f4f4; }
td { text-align: right; }
td:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; }
code { background: #f4f4f4; padding: 0.1em 0.3em; border-radius: 3px; }
pre { background: #f4f4f4; padding: 0.8em; overflow-x: auto; }
"""
_IMG = re.compile(r'(<img\s[^>]*?src=")([^":]+?\.png)(")')


def render(markdown_text: str) -> str:
    """Markdown (GitHub tables) to an HTML fragment."""
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown_text)


def inline_images(fragment: str, folder: Path) -> str:
    """Every relative PNG ``src`` replaced by its bytes as a data URI; a missing file raises (no broken image)."""

    def data_uri(m: re.Match) -> str:
        data = (folder / html.unescape(m[2])).read_bytes()
        return f"{m[1]}data:image/png;base64,{base64.b64encode(data).decode('ascii')}{m[3]}"

    return _IMG.sub(data_uri, fragment)


def write_html(folder: Path, markdown_name: str = "report.md", html_name: str = "report.html") -> Path:
    """``folder/report.md`` and the PNGs it shows as ``folder/report.html``, replaced whole."""
    text = (folder / markdown_name).read_text(encoding="utf-8")
    first = next((line.lstrip("# ").strip() for line in text.splitlines() if line.startswith("# ")), "Report")
    body = inline_images(render(text), folder)
    page = (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n<link rel="icon" href="data:,">\n'
        f"<title>{html.escape(first)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )
    out = folder / html_name
    tmp = out.with_name(f".{out.stem}.tmp{out.suffix}")
    tmp.write_text(page, encoding="utf-8")
    tmp.replace(out)
    return out
