"""Defender incident comments, which have no id and can be neither edited nor deleted (GRAPH.md E).

A comment is ``{comment, createdByDisplayName, createdDateTime}`` (B.4). What identifies it is its
time and its text (E's client rule), so :func:`comment_id` derives an id from both, the same
whether the comment came back in a POST answer or in a later GET of the incident.

Writing one exactly once needs more than a deterministic id (Sentinel's way): the POST is not
idempotent and is never retried blindly. The writer records its intent (the hash of the exact
text) before posting; after the POST the answer lists every comment, and :func:`find_posted`
picks ours: the comment with that text which was not there before. After a crash between the
POST and the record of its outcome, the same search in the incident as read next time tells
whether it landed, so it is posted again only when it did not.

The author of an app's comment reads ``API-App:<app display name>``, but the POST answer may show
the name without the prefix (B.4): :func:`by_app` accepts both and is only a backstop.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Sequence

from agent.connectors.graph.models import GraphComment, datetime_ticks
from agent.core import text as textfmt

MAX_CHARS = 30_000  # E: the portal's limit, counted in UTF-16 code units like the service does
API_APP = "API-App:"


def text_hash(text: str) -> str:
    """Hash of a comment's text as written and as read back (line endings and outer blanks aside)."""
    return hashlib.sha256(text.replace("\r\n", "\n").strip().encode()).hexdigest()


def comment_id(comment: GraphComment) -> str:
    """A stable id for a comment without one: ``<100 ns ticks>:<text hash prefix>`` (E)."""
    ticks = datetime_ticks(comment.created) if comment.created is not None else 0
    return f"{ticks}:{text_hash(comment.text)[:20]}"


def new_comments(comments: Iterable[GraphComment], known: Collection[str]) -> list[GraphComment]:
    """The comments whose id is not in ``known``, oldest first, each once (two equal entries at
    the same instant are one comment to the sync: nothing can tell them apart)."""
    seen: set[str] = set()
    out: list[GraphComment] = []
    for comment in comments:
        cid = comment_id(comment)
        if cid not in known and cid not in seen:
            seen.add(cid)
            out.append(comment)
    return out


def find_posted(
    comments: Sequence[GraphComment], digest: str, taken: Collection[str] = ()
) -> GraphComment | None:
    """The comment whose text hashes to ``digest`` and whose id is not ``taken`` (already linked
    to something else); the newest such one. None: the POST did not land."""
    for comment in reversed(comments):
        if text_hash(comment.text) == digest and comment_id(comment) not in taken:
            return comment
    return None


def by_app(comment: GraphComment, app_name: str | None) -> bool:
    """Written by the app ``app_name`` (its display name), with or without ``API-App:`` (B.4)."""
    if not app_name or comment.author is None:
        return False
    return comment.author in (f"{API_APP}{app_name}", app_name)


def app_name_of(last_modified_by: str | None) -> str | None:
    """The display name in ``API-App:<name>`` (B.5), else None."""
    if last_modified_by and last_modified_by.startswith(API_APP):
        return last_modified_by[len(API_APP) :] or None
    return None


def capped(text: str, where: str) -> str:
    """A comment's text within the 30,000-character limit, cut with a visible notice."""
    return textfmt.cap(text, MAX_CHARS, where, utf16=True)
