"""Putting text a user typed (names of projects, classes, files, people) into Markdown
safely: it must read exactly as typed, never become a link, an image, a heading or HTML."""

from __future__ import annotations

import html
import re
from typing import Any

import pandas as pd

# CommonMark lets a backslash escape any ASCII punctuation and then shows it literally.
# Escaping all of it also defuses what GFM and Streamlit add on top: autolinks (`www.`,
# `http:`, `a@b.c`), `$` maths, `:colour[...]` directives, `~` strikethrough, `|` tables.
_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")


def md_escape(text: Any) -> str:
    """`text` as Markdown that renders literally, on one line (a newline in a name could
    otherwise start a heading, a list or a code block)."""
    one_line = " ".join(str(text).splitlines())
    return _ASCII_PUNCTUATION.sub(r"\\\1", one_line)


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
