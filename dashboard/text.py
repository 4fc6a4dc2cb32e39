"""Text that people typed (project, class, user and file names) inside Markdown: shown as
typed, never as links, images, HTML or formatting."""

from __future__ import annotations

import string

_ESCAPED = frozenset(string.punctuation)


def md_escape(text: object) -> str:
    """`text` on one line with every ASCII punctuation character backslash-escaped, which
    CommonMark (and so st.markdown) shows literally: `![x](http://h/p.png)` stays text."""
    one_line = " ".join(str(text).split())
    return "".join("\\" + char if char in _ESCAPED else char for char in one_line)
