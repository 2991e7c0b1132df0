"""A report as a list of blocks, rendered to one Markdown file and one self-contained HTML page.

Blocks: :class:`Heading`, :class:`Text`, :class:`Items`, :class:`TableBlock`, :class:`Image`,
:class:`Fold` (collapsed in HTML, plain in Markdown). Images are referenced by paths relative to the
report folder, so the folder can be moved or served as it is; the CSS is inline.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Sequence, Union

from .tables import Table

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: #222;
       max-width: 1280px; margin: 0 auto; padding: 1.5em 2em 4em; line-height: 1.45; }
h1 { font-size: 1.7em; margin-bottom: .2em; }
h2 { font-size: 1.35em; border-bottom: 1px solid #ddd; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1.1em; margin-top: 1.6em; }
h4 { font-size: 1em; margin: 1.2em 0 .3em; }
p.meta, caption, .note { color: #555; font-size: .9em; }
table { border-collapse: collapse; margin: .8em 0 1.2em; font-size: .85em; }
caption { caption-side: top; text-align: left; padding-bottom: .4em; }
th, td { border: 1px solid #d8d8d8; padding: .25em .5em; vertical-align: top; }
th { background: #f3f5f8; text-align: left; }
td { overflow-wrap: anywhere; }
td:first-child { min-width: 9em; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; overflow-wrap: normal; }
td.num .m, td.num .e { white-space: nowrap; }
tbody tr:nth-child(even) { background: #fafbfc; }
img { max-width: 100%; height: auto; border: 1px solid #eee; margin: .4em 0; }
figure { margin: .8em 0 1.4em; }
figcaption { color: #555; font-size: .85em; }
nav ul { columns: 2; font-size: .92em; }
details { margin: .6em 0; }
summary { cursor: pointer; color: #345; }
code { background: #f3f3f3; padding: 0 .25em; border-radius: 3px; }
.wide { overflow-x: auto; }
"""


@dataclass
class Heading:
    text: str
    level: int = 2
    anchor: str = ""


@dataclass
class Text:
    text: str
    css: str = ""


@dataclass
class Items:
    items: list[str]


@dataclass
class TableBlock:
    table: Table
    title: str = ""


@dataclass
class Image:
    src: str  #: relative to the report folder
    caption: str = ""


@dataclass
class Fold:
    summary: str
    blocks: list["Block"] = field(default_factory=list)


Block = Union[Heading, Text, Items, TableBlock, Image, Fold]


# ------------------------------------------------------------------------------------------ markdown
def to_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * b.level + " " + b.text, ""]
        elif isinstance(b, Text):
            out += [b.text, ""]
        elif isinstance(b, Items):
            out += [f"- {i}" for i in b.items] + [""]
        elif isinstance(b, TableBlock):
            if b.table.caption:
                out += [f"*{b.table.caption}*", ""]
            out += [b.table.markdown()]
        elif isinstance(b, Image):
            out += [f"![{b.src.rsplit('/', 1)[-1]}]({b.src})", ""]
            if b.caption:
                out += [f"*{b.caption}*", ""]
        elif isinstance(b, Fold):
            out += [f"**{b.summary}**", "", to_markdown(b.blocks)]
    return "\n".join(out).rstrip() + "\n"


# -------------------------------------------------------------------------------------------- HTML
def _html_blocks(blocks: Sequence[Block]) -> list[str]:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            anchor = f' id="{html.escape(b.anchor)}"' if b.anchor else ""
            out.append(f"<h{b.level}{anchor}>{html.escape(b.text)}</h{b.level}>")
        elif isinstance(b, Text):
            cls = f' class="{b.css}"' if b.css else ""
            out.append(f"<p{cls}>{_inline(b.text)}</p>")
        elif isinstance(b, Items):
            out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, TableBlock):
            out.append(f'<div class="wide">{b.table.html()}</div>')
        elif isinstance(b, Image):
            cap = f"<figcaption>{html.escape(b.caption)}</figcaption>" if b.caption else ""
            out.append(f'<figure><img src="{html.escape(b.src)}" alt="{html.escape(b.caption or b.src)}" '
                       f'loading="lazy">{cap}</figure>')
        elif isinstance(b, Fold):
            out.append(f"<details><summary>{html.escape(b.summary)}</summary>")
            out += _html_blocks(b.blocks)
            out.append("</details>")
    return out


def _inline(text: str) -> str:
    """Escape, then turn Markdown ``code`` spans into <code>."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def to_html(blocks: Sequence[Block], title: str, toc: Sequence[tuple[str, str]] = ()) -> str:
    """A single page: inline CSS, a table of contents of ``(anchor, text)``, then the blocks."""
    nav = ""
    if toc:
        nav = "<nav><ul>" + "".join(f'<li><a href="#{html.escape(a)}">{html.escape(t)}</a></li>' for a, t in toc) + \
              "</ul></nav>"
    body = "\n".join(_html_blocks(blocks))
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            f"<h1>{html.escape(title)}</h1>\n{nav}\n{body}\n</body>\n</html>\n")
