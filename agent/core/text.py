"""Text for the other side: HTML to readable text, short headers, size caps. Pure, no I/O.

Sentinel comments are HTML (the portal's editor writes ``<p>``, ``<br>``, ``<ul>``, links and
entities); ServiceNow journal entries are plain text (REFERENCE C.9), unless wrapped in
``[code]...[/code]``, which the ServiceNow UI renders as HTML. So:

* Sentinel -> ServiceNow: :func:`html_to_text` (``comment_format = text``) or :func:`code_block`
  (``comment_format = code``), below a one-line header naming author and time (UTC).
* ServiceNow -> Sentinel: :func:`text_to_html` of the journal text below a header naming the
  ServiceNow user, the time and the kind of entry (work note or additional comment). The portal
  renders a comment as HTML (REFERENCE E.3): plain text with line breaks would read as one
  run-on line and ``5 < 6 & <tag>`` would lose its ``<tag>``, so the text is escaped and its
  line breaks become ``<br>``. Nothing from ServiceNow is ever rendered as markup in Sentinel.
* Every message is capped. Sentinel counts a comment's length in UTF-16 code units and refuses
  more than 30,000 (REFERENCE A.8); an over-long text is **truncated with a visible notice**
  rather than split, because splitting would spend several of the incident's 100 comments on one
  entry and would need several ids per journal entry. ServiceNow notes are capped the same way.

No visible marker is ever added for echo suppression; the shadow's comment links do that.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime
from html.parser import HTMLParser

SENTINEL_MAX = 30_000
"""Sentinel's limit per comment, in UTF-16 code units (REFERENCE A.8)."""

SNOW_NOTE_MAX = 32_000
"""Our cap per ServiceNow journal entry (characters): a full Sentinel comment plus its header fits."""

LIST_MAX = 25
"""Alerts or entities listed per note; the rest is summarised in an "N more" line."""

_BLOCK = frozenset(
    {
        "address", "article", "aside", "blockquote", "div", "dl", "dt", "dd", "fieldset", "figure",
        "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li", "main", "nav",
        "ol", "p", "pre", "section", "table", "tr", "ul",
    }
)  # fmt: skip
_SKIP = frozenset({"script", "style", "head", "title", "template"})
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANK_LINES = re.compile(r"\n{3,}")
_RUN_OF_SPACES = re.compile(r" {2,}")
_PRE_SPACE = "\ue000"  # a private-use character standing in for a space inside <pre>


class _TextParser(HTMLParser):
    """Collects readable text: blocks and ``<br>`` become line breaks, list items get "- ",
    table cells are separated by " | ", links keep their target when it differs from the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._skip = 0
        self._pre = 0
        self._links: list[tuple[str, int]] = []
        self._cells = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            self._skip += 1
        elif tag == "br":
            self.out.append("\n")
        elif tag == "li":
            self.out.append("\n- ")
        elif tag in ("td", "th"):
            if self._cells:
                self.out.append(" | ")
            self._cells += 1
        elif tag == "a":
            href = next((v for k, v in attrs if k == "href" and v), "")
            self._links.append((href, len(self.out)))
        elif tag in _BLOCK:
            self.out.append("\n")
            if tag == "tr":
                self._cells = 0
            if tag == "pre":
                self._pre += 1
        if tag == "img":
            alt = next((v for k, v in attrs if k == "alt" and v), "")
            if alt:
                self.out.append(f"[{alt}]")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "img", "hr"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            text = "".join(self.out[start:]).strip()
            if href and not href.lower().startswith(("javascript:", "data:")) and href != text:
                self.out.append(f" ({href})" if text else href)
        elif tag in _BLOCK and tag not in ("li", "tr"):
            # A list or table ends its paragraph, like a </p> followed by a new block does.
            self.out.append("\n\n" if tag in ("ul", "ol", "table") else "\n")
            if tag == "pre":
                self._pre = max(0, self._pre - 1)

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._pre:
            # Preformatted spaces survive the line tidying below (restored in html_to_text).
            self.out.append(data.replace("\r\n", "\n").replace(" ", _PRE_SPACE))
        else:
            self.out.append(_SPACES.sub(" ", data.replace("\r", " ").replace("\n", " ")))


def looks_like_html(text: str) -> bool:
    """True when ``text`` contains a tag or an entity (plain text passes through untouched)."""
    return bool(re.search(r"<[a-zA-Z/!][^>]*>|&(#\d+|#x[0-9a-fA-F]+|[a-zA-Z]+);", text))


def html_to_text(text: str) -> str:
    """Readable plain text from a Sentinel comment's HTML; plain text is only tidied.

    Unicode (emoji, right-to-left scripts, CJK) is kept as it is; entities are decoded.
    """
    if not looks_like_html(text):
        return _tidy(text.replace("\r\n", "\n"))
    parser = _TextParser()
    parser.feed(text)
    parser.close()
    lines = [line.strip(" ") for line in "".join(parser.out).split("\n")]
    return _tidy("\n".join(lines)).replace(_PRE_SPACE, " ")


def _tidy(text: str) -> str:
    return _BLANK_LINES.sub("\n\n", text).strip()


def text_to_html(text: str) -> str:
    """Plain text as HTML that reads the same: ``&``, ``<``, ``>`` escaped, line breaks as
    ``<br>``, runs of spaces kept (a browser would fold them into one)."""
    escaped = html.escape(text.replace("\r\n", "\n").replace("\r", "\n"), quote=False)
    escaped = _RUN_OF_SPACES.sub(_keep_spaces, escaped.replace("\t", "    "))
    return escaped.replace("\n", "<br>")


def _keep_spaces(run: re.Match[str]) -> str:
    return "&nbsp;" * (len(run.group()) - 1) + " "


def cap_html(text: str, limit: int, where: str) -> str:
    """:func:`text_to_html` of ``text``, capped like :func:`cap` but measured after escaping
    (Sentinel's limit counts the HTML it stores, in UTF-16 code units)."""
    whole = text_to_html(text)
    if utf16_len(whole) <= limit:
        return whole
    low, high = 0, len(text)  # the longest head whose HTML with the notice fits
    while low < high:
        mid = (low + high + 1) // 2
        if utf16_len(text_to_html(_with_notice(text, mid, where))) <= limit:
            low = mid
        else:
            high = mid - 1
    return text_to_html(_with_notice(text, low, where))


def _with_notice(text: str, keep: int, where: str) -> str:
    notice = f"[... truncated: {utf16_len(text):,} characters in total; the full text is in {where}]"
    return text[:keep].rstrip() + "\n\n" + notice


def code_block(text: str) -> str:
    """The HTML wrapped for ServiceNow to render it (REFERENCE C.9); a ``[/code]`` inside is
    defused so the block cannot be closed early."""
    return "[code]" + text.replace("[/code]", "[/code&#93;") + "[/code]"


def utc_stamp(when: datetime) -> str:
    """``2024-05-01 10:00 UTC``."""
    return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def sentinel_comment_header(name: str | None, upn: str | None, when: datetime) -> str:
    """Header of a Sentinel comment copied to ServiceNow: who wrote it and when."""
    who = name or upn or "unknown author"
    if upn and name and upn.lower() != name.lower():
        who = f"{name} ({upn})"
    return f"Microsoft Sentinel comment by {who}, {utc_stamp(when)}"


JOURNAL_KINDS = {"work_notes": "work note", "comments": "additional comment"}


def journal_header(user: str, element: str, when: datetime, number: str) -> str:
    """Header of a ServiceNow journal entry copied to Sentinel: kind, user, record and time."""
    kind = JOURNAL_KINDS.get(element, element)
    return f"ServiceNow {kind} by {user or 'unknown user'} on {number}, {utc_stamp(when)}"


def utf16_len(text: str) -> int:
    """Length as .NET (and so Sentinel) counts it: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def cap(text: str, limit: int, where: str, *, utf16: bool = False) -> str:
    """``text`` if it fits in ``limit``; else its head plus a visible notice saying how much was
    left out and ``where`` the whole text is. Never splits a character (or surrogate pair)."""
    size = utf16_len if utf16 else len
    if size(text) <= limit:
        return text
    total = size(text)
    # The notice's own length depends on the number it prints; the total bounds it.
    notice = f"\n\n[... truncated: {total:,} characters in total; the full text is in {where}]"
    budget = limit - size(notice)
    if budget <= 0:
        raise ValueError(f"limit {limit} leaves no room for text")
    head = _utf16_head(text, budget) if utf16 else text[:budget]
    return head.rstrip() + notice


def _utf16_head(text: str, budget: int) -> str:
    used = 0
    for i, ch in enumerate(text):
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > budget:
            return text[:i]
    return text


def bullet_list(title: str, lines: list[str], limit: int = LIST_MAX, noun: str = "more") -> str:
    """``title`` then up to ``limit`` "- line" rows, then "- N more" when there were more."""
    shown = lines[:limit]
    rows = [title, *(f"- {line}" for line in shown)]
    if len(lines) > limit:
        rows.append(f"- {len(lines) - limit} {noun}")
    return "\n".join(rows)
