"""ListObjectsV2 pages, parsed while they stream in: bounded in bytes, depth and keys, with no
entity expansion, and a clear error naming the server for anything that is not a listing.

The standard library's XMLPullParser (expat) is fed the body in chunks as it arrives; each
`<Contents>` is taken and dropped as soon as it ends, so a page costs memory for one
object at a time, not for the document. A page may hold at most `max_bytes` of body and
`max_keys` objects; elements nest at most MAX_DEPTH deep (a listing needs three); a
document type declaration (the only way to declare entities) is refused before it is
parsed. What botocore would have turned into an internal error (a `<Contents>` without a
`<Key>`, a size that is not a number, nested `<Contents>`) is a `ListingError` saying what
was wrong.
"""

from __future__ import annotations

from dataclasses import field
from urllib.parse import unquote_plus

from ..record import record

MAX_PAGE_BYTES = 8 << 20   # one page's body (1000 keys of 1024 bytes each are about 1.3 MiB)
MAX_DEPTH = 4
MAX_FIELD = 64 << 10       # one element's text (a key is at most 1024 bytes)
_FORBIDDEN = (b"<!DOCTYPE", b"<!ENTITY")


class ListingError(Exception):
    """The body is not a ListObjectsV2 result that can be used."""


@record(frozen=True)
class Listed:
    key: str
    size: int
    etag: str  # without quotes
    modified: str


@record
class Page:
    objects: list[Listed] = field(default_factory=list)
    truncated: bool = False
    next_token: str | None = None


class PageParser:
    """Feed a ListObjectsV2 response body chunk by chunk, then `close()` for the page."""

    def __init__(self, *, max_bytes: int = MAX_PAGE_BYTES, max_keys: int = 1000) -> None:
        from xml.etree.ElementTree import XMLPullParser

        self.max_bytes, self.max_keys = max_bytes, max_keys
        self._parser = XMLPullParser(events=("start", "end"))
        self._seen = 0
        self._tail = b""
        self._depth = 0
        self._root = None
        self._top: dict[str, str] = {}
        self._page = Page()
        self._encoded = False

    def feed(self, chunk: bytes) -> None:
        self._seen += len(chunk)
        if self._seen > self.max_bytes:
            raise ListingError(f"a listing page larger than {self.max_bytes} bytes")
        window = self._tail + chunk
        if any(f in window for f in _FORBIDDEN):
            raise ListingError("a document type declaration (entities are not accepted in a listing)")
        self._tail = window[-(max(len(f) for f in _FORBIDDEN) - 1):]
        try:
            self._parser.feed(chunk)
        except Exception as exc:  # xml.etree.ElementTree.ParseError and expat's errors
            raise ListingError(f"not well-formed XML ({exc})") from None
        self._drain()

    def close(self) -> Page:
        try:
            self._parser.close()
        except Exception as exc:
            raise ListingError(f"not well-formed XML ({exc})") from None
        self._drain()
        if self._root is None:
            raise ListingError("an empty body")
        if self._root.tag.rsplit("}", 1)[-1] != "ListBucketResult":
            raise ListingError(f"a <{self._root.tag.rsplit('}', 1)[-1][:40]}> document, not a ListBucketResult")
        truncated = self._top.get("IsTruncated", "false").strip().lower()
        if truncated not in ("true", "false"):
            raise ListingError(f"IsTruncated is {truncated[:20]!r}")
        self._page.truncated = truncated == "true"
        token = self._top.get("NextContinuationToken")
        self._page.next_token = token if token else None
        if self._page.truncated and not self._page.next_token:
            raise ListingError("IsTruncated without a NextContinuationToken")
        if self._encoded:  # keys asked for with encoding-type=url come URL-encoded (wherever EncodingType stands)
            self._page.objects = [Listed(unquote_plus(o.key), o.size, o.etag, o.modified) for o in self._page.objects]
        return self._page

    def _drain(self) -> None:
        for event, elem in self._parser.read_events():
            name = elem.tag.rsplit("}", 1)[-1]
            if event == "start":
                self._depth += 1
                if self._depth == 1:
                    self._root = elem
                elif self._depth > MAX_DEPTH:
                    raise ListingError(f"elements nested {self._depth} deep (a listing has three levels)")
                elif name == "Contents" and self._depth != 2:
                    raise ListingError("a <Contents> inside another element")
                continue
            self._depth -= 1
            if len(elem.text or "") > MAX_FIELD:
                raise ListingError(f"a <{name[:40]}> of more than {MAX_FIELD} characters")
            if self._depth == 1:  # a child of ListBucketResult: taken, then dropped
                if name == "Contents":
                    self._contents(elem)
                elif len(elem) == 0:
                    self._top[name] = elem.text or ""
                    if name == "EncodingType":
                        self._encoded = (elem.text or "").strip().lower() == "url"
                assert self._root is not None
                self._root.remove(elem)

    def _contents(self, elem) -> None:
        fields = {child.tag.rsplit("}", 1)[-1]: child.text or "" for child in elem}
        if "Key" not in fields:
            raise ListingError("a <Contents> without a <Key>")
        size = fields.get("Size", "").strip()
        if not size.isdigit() or len(size) > 20:
            raise ListingError(f"the size of {fields['Key'][:200]!r} is {size[:30]!r}, not a number")
        if len(self._page.objects) >= self.max_keys:
            raise ListingError(f"more than the {self.max_keys} objects a page was asked for")
        self._page.objects.append(Listed(fields["Key"], int(size), fields.get("ETag", "").strip().strip('"'), fields.get("LastModified", "").strip()))
