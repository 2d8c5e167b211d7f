"""Text from submitters and records, made safe to quote in an error message or to print on a page.

- `excerpt`: a short, one-line repr of any value for an error message, however large the value;
- `control_character`: the first character a one-line field must not hold (newline, NUL, bidi
  overrides that reorder what is displayed);
- `markdown_text` / `markdown_code`: the value as literal text in a GitHub-flavoured markdown table
  cell: no table cell, HTML tag, link, image, autolink or emphasis can come out of it;
- `allowed_link` / `hub_tree_link`: links only as `https://` to the hosts a manifest may name.
"""

from __future__ import annotations

import html
import re
import reprlib
from typing import Any
from urllib.parse import urlsplit

EXCERPT_CHARS = 40
LINK_HOSTS = ("arxiv.org", "doi.org", "openreview.net", "huggingface.co", "github.com")
MAX_LINK_CHARS = 300
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
FULL_SHA = re.compile(r"[0-9a-f]{40}")

# C0/C1 controls, line and paragraph separators, and the bidi controls that make text display in
# another order than it is stored (a "99.9" that is stored as "9.99").
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# Characters that start markdown syntax anywhere in a cell: code, emphasis, links and images,
# cells, strikethrough, math, email autolinks. `_` is handled apart (only outside words).
_MARKDOWN_PUNCTUATION = re.compile(r"([\\`*\[\]|~$!@])")
_LONE_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")
_SCHEME_AUTOLINK = re.compile(r":(?=/)")          # https://... in plain text becomes a link on GitHub
_WWW_AUTOLINK = re.compile(r"(?i)\b(www)\.")       # and so does www.example.com
_CODE = re.compile(r"[A-Za-z0-9_.:/+=-]{1,200}")
_URL_CHARACTERS = re.compile(rf"[A-Za-z0-9\-._~/?#%&=+,;:@!$'*()]{{1,{MAX_LINK_CHARS}}}")

_REPR = reprlib.Repr()
_REPR.maxstring = EXCERPT_CHARS
_REPR.maxother = EXCERPT_CHARS
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 3
_REPR.maxlevel = 2


def excerpt(value: Any, limit: int = EXCERPT_CHARS) -> str:
    """At most about 2 * `limit` characters on one line, with the full size when it was cut."""
    if isinstance(value, str):   # repr escapes newlines, NUL and bidi controls
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}... ({len(value):,} characters)"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {value.bit_length():,} bits"
    try:
        text = _CONTROL.sub("?", _REPR.repr(value))
    except Exception:   # a repr that fails is no reason to lose the error it belongs to
        text = f"a {type(value).__name__}"
    if isinstance(value, list | tuple | dict | set) and len(value) > _REPR.maxlist:
        text += f" ({len(value):,} items)"
    return text if len(text) <= 2 * limit else text[: 2 * limit] + "..."


def field_name(key: str) -> str:
    """A key from untrusted input as an error message names it: itself when short and plain."""
    return key if len(key) <= EXCERPT_CHARS and _CONTROL.search(key) is None else excerpt(key)


def control_character(text: str) -> str | None:
    """The first control, line-separator or bidi character in `text`, as an escape (e.g. '\\x00')."""
    found = _CONTROL.search(text)
    return None if found is None else found.group().encode("unicode_escape").decode("ascii")


def markdown_text(value: Any) -> str:
    """`value` as literal text inside a markdown table cell (GitHub-flavoured), on one line."""
    text = _CONTROL.sub(" ", str(value))
    text = html.escape(text, quote=False)              # & < >: no HTML tag or entity of the sender's
    text = _MARKDOWN_PUNCTUATION.sub(r"\\\1", text)
    text = _LONE_UNDERSCORE.sub(r"\\_", text)          # a_b never starts emphasis; _a_ would
    text = _SCHEME_AUTOLINK.sub(r"\\:", text)
    return _WWW_AUTOLINK.sub(r"\1\\.", text)


def markdown_code(value: Any) -> str:
    """A short identifier (flag, claim or measurement name, hash) in backticks; anything else as
    escaped text, since a code span cannot be escaped from inside."""
    if isinstance(value, str) and _CODE.fullmatch(value):
        return f"`{value}`"
    return markdown_text(value)


def allowed_link(url: Any) -> str | None:
    """`url` ready to be a markdown link target when it is https:// to one of LINK_HOSTS, else None."""
    if not isinstance(url, str) or not _URL_CHARACTERS.fullmatch(url):
        return None
    parts = urlsplit(url)
    if parts.scheme != "https" or parts.netloc != parts.hostname or parts.hostname not in LINK_HOSTS:
        return None
    return url.replace("(", "%28").replace(")", "%29")   # a ")" would end the markdown link


def link(label: str, url: Any) -> str | None:
    """`[label](url)` for an allowed url, else None; `label` is markdown the caller built."""
    target = allowed_link(url)
    return None if target is None else f"[{label}]({target})"


def hub_tree_link(repo: Any, revision: Any) -> str:
    """The Hub repository at its pinned commit: a link when both are well formed, else plain text."""
    if isinstance(repo, str) and isinstance(revision, str) and REPO_ID.fullmatch(repo) \
            and FULL_SHA.fullmatch(revision):
        return f"[{markdown_text(repo)}@{revision[:7]}](https://huggingface.co/{repo}/tree/{revision})"
    return markdown_text(f"{repo}@{revision}")
