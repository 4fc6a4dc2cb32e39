"""Text that people typed (project, class, user and file names) inside Markdown: shown as
typed, never as links, images, HTML or formatting."""

from __future__ import annotations

import re

# What can start a Markdown, HTML, LaTeX or Streamlit construct anywhere in a line
# (links, images, emphasis, code, tags, entities, tables, `:icon:` and `:red[...]`).
_INLINE = frozenset("\\`*_[]<>#|~$:&")
# Characters that only matter at the start of a line (lists, headings, rules, quotes).
_LINE_START = re.compile(r"^(\d+(?=[.)])|[-+=>])")


def md_escape(text: object) -> str:
    """`text` on one line, backslash-escaped where Markdown would read it as markup:
    `![x](http://h/p.png)` stays text, while `MobileNetV2-0.35` stays readable as is."""
    one_line = " ".join(str(text).split())
    escaped = "".join("\\" + char if char in _INLINE else char for char in one_line)
    escaped = escaped.replace("\\](", "\\]\\(")  # "[text](url)" could never be a link
    escaped = re.sub(r"(?i)\bwww\.", lambda m: m.group(0)[:-1] + "\\.", escaped)  # autolinks
    match = _LINE_START.match(escaped)
    if match:
        end = match.end()
        # "1. x" -> "1\. x"; "- x" -> "\- x"
        escaped = (escaped[:end] + "\\" + escaped[end:] if match.group(0)[0].isdigit()
                   else "\\" + escaped)
    return escaped
