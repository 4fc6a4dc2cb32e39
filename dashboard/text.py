"""Text that people typed (project, class, user and file names) inside Markdown: shown as
typed, never as links, images, HTML or formatting."""

from __future__ import annotations

import html
import re
from typing import Any

import pandas as pd

# What can start a Markdown, HTML, LaTeX or Streamlit construct anywhere in a line
# (links, images, emphasis, code, tags, entities, tables, `$` maths, `:icon:` and
# `:red[...]`, and the `http:` / `a@b.c` autolinks of GFM).
_INLINE = frozenset("\\`*_[]<>#|~$:&@")
# Characters that only matter at the start of a line (lists, headings, rules, quotes).
WORD_JOINER = "\u2060"
_LINE_START = re.compile(r"^(\d+(?=[.)])|[-+=>])")


def md_escape(text: Any) -> str:
    """`text` on one line, backslash-escaped where Markdown would read it as markup:
    `![x](http://h/p.png)` stays text, while `MobileNetV2-0.35` stays readable as is."""
    one_line = " ".join(str(text).split())
    escaped = "".join("\\" + char if char in _INLINE else char for char in one_line)
    escaped = escaped.replace("\\](", "\\]\\(")  # "[text](url)" could never be a link
    # Streamlit's renderer finds bare URLs and e-mail addresses after the backslashes are
    # gone: an invisible word joiner keeps "http://", "www." and "@" from being matched.
    escaped = escaped.replace("\\://", "\\:" + WORD_JOINER + "//")
    escaped = re.sub(r"(?i)\bwww\.", lambda m: m.group(0)[:-1] + WORD_JOINER + ".", escaped)
    escaped = escaped.replace("\\@", WORD_JOINER + "\\@")
    match = _LINE_START.match(escaped)
    if match:
        end = match.end()
        # "1. x" -> "1\. x"; "- x" -> "\- x"
        escaped = (escaped[:end] + "\\" + escaped[end:] if match.group(0)[0].isdigit()
                   else "\\" + escaped)
    return escaped


def md_escape_frame(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of `table` for st.table, which renders every cell, header and index label as
    Markdown: each of them escaped."""
    escaped = table.map(md_escape)
    escaped.index = [md_escape(label) for label in table.index]
    escaped.columns = [md_escape(label) for label in table.columns]
    return escaped


def plotly_text(text: Any) -> str:
    """`text` for Plotly labels, which read a few HTML tags (<a href>, <b>, <br>): as text."""
    return html.escape(str(text), quote=False)
