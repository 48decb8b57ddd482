"""No secret leaves the program: one registry of secrets, applied where bytes leave.

Every message reaches the user through one of three exits: stdout/stderr (the CLI
wraps both in `RedactingStream`, so click.echo, print, progress lines, warnings and
library loggers pass through it), the JSON report (`Report.to_json`: --json,
--report and `<state>/report.json`) and the termination log. Each masks every
registered secret as `***`, so no raise site has to remember to.

A secret is masked in the forms an error message may carry it: as is, URL-quoted,
JSON- or repr-escaped, inside base64 (basic auth), line by line when it spans lines
(a token file with a second line), and cut short (a server's echo truncated in the
middle of the token): any run of its first `PREFIX` characters or more.

Every credential the program is given is masked, whatever its length. A secret of at
least MIN_EXPLICIT characters (MIN_ENV for a variable that is a secret by its name only)
is masked wherever it appears. A shorter one (a registry password of 3 characters) would
be masked everywhere only by garbling ordinary words ("a", "abc"), so it is masked where
it stands as a credential's value, as a whole token:
  - after a credential word and `=`, `:` or spaces: `password=abc`, `"token": "abc"`,
    `Authorization: abc`, `Bearer abc`, `Basic abc`, `X-Amz-Security-Token=abc`;
  - as a URL's password: `//user:abc@host`;
  - and in the longer forms it is sent in, registered with it where the credential is
    read: `user:abc` and its base64 (a registry's basic auth), masked everywhere when they
    are long enough, and a short `user:abc` as a whole token anywhere.
A short secret elsewhere in a message, not as a value, is left: it cannot be told apart
from the same word in the text.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import IO

MASK = "***"
PREFIX = 8  # a secret cut short is still masked from this many leading characters on
MIN_EXPLICIT = 6  # shorter "secrets" would mask common words and garble every message
MIN_ENV = 8
# Environment credentials of today's and the next sources (s3://, oci://), and any
# variable named like a credential.
ENV_SECRETS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
               "AZURE_STORAGE_KEY", "GOOGLE_OAUTH_ACCESS_TOKEN", "PREFLIGHT_SMOKE_API_KEY")
ENV_SUFFIXES = ("_TOKEN", "_SECRET", "_PASSWORD", "_PASSWD", "_KEY")
ENV_NOT_SECRET = ("_PUBLIC_KEY", "GPG_KEY")  # public material some base images set

_bases: set[str] = set()  # the secrets as given (and each line of a multi-line one)
_forms: set[str] = set()  # every form to mask
_pattern: re.Pattern[str] | None = None
_short: set[str] = set()  # secrets shorter than their threshold: masked as a credential's value
_short_pattern: re.Pattern[str] | None = None
# What stands before a credential's value: a credential word then `=`, `:` or spaces
# (quotes allowed around either), or a URL's `//user:`.
_CREDENTIAL_WORDS = (r"pass(?:word|wd)?|pwd|secret(?:[-_ ]?(?:access[-_ ]?)?key)?|(?:access|session|security|identity|registry|"
                     r"refresh|auth|api|bearer|id)?[-_ ]?token|api[-_ ]?key|apikey|access[-_ ]?key|auth(?:orization)?|"
                     r"credentials?|bearer|basic")
_BEFORE = (rf"(?:(?<![A-Za-z0-9])(?:{_CREDENTIAL_WORDS})(?:[\"']?\s*[:=]\s*[\"']?|\s+(?:(?:Bearer|Basic)\s+)?)"
           r"|//[^/@\s:]*:)")
_AFTER = r"(?![A-Za-z0-9_-])"  # a whole token: nothing that could continue the value follows


def reset() -> None:
    """Forget every secret (one CLI run is one scope; tests run many in one process)."""
    global _pattern, _short_pattern
    _bases.clear()
    _forms.clear()
    _pattern = None
    _short.clear()
    _short_pattern = None


def register(value: str | bytes | None, *, min_len: int = MIN_EXPLICIT) -> None:
    """Mask `value` in everything that leaves from now on: everywhere when it has `min_len`
    characters or more, as a credential's value when it is shorter."""
    global _pattern, _short_pattern
    if value is None:
        return
    if isinstance(value, bytes):
        value = value.decode("utf-8", "surrogateescape")
    pieces = {value, value.strip()} | {line.strip() for line in re.split(r"[\x00-\x1f\x7f]+", value)}
    added = False
    for piece in pieces:
        if not piece or piece in _bases:
            continue
        if len(piece) < min_len:
            if piece not in _short:
                _short.add(piece)
                _short_pattern = _compile_short()
            continue
        _bases.add(piece)
        _forms.update(f for f in _encodings(piece) if len(f) >= min_len)
        added = True
    if added:
        ordered = sorted(_forms, key=len, reverse=True)
        _pattern = re.compile("|".join(map(re.escape, ordered)))


def _compile_short() -> re.Pattern[str]:
    """Short secrets as a credential's value; a short `user:password` pair as a whole token
    anywhere (a colon between two words is no common word)."""
    values = sorted({f for s in _short for f in _encodings(s)}, key=len, reverse=True)
    pairs = sorted({s for s in _short if ":" in s.strip(":")}, key=len, reverse=True)
    alternatives = [f"({_BEFORE})(?:{'|'.join(map(re.escape, values))}){_AFTER}"]
    if pairs:
        alternatives.append(f"()(?<![A-Za-z0-9_-])(?:{'|'.join(map(re.escape, pairs))}){_AFTER}")
    return re.compile("|".join(alternatives), re.IGNORECASE)


def _encodings(secret: str) -> set[str]:
    import json
    from urllib.parse import quote, quote_plus

    forms = {secret, quote(secret, safe=""), quote_plus(secret), json.dumps(secret)[1:-1], repr(secret)[1:-1]}
    raw = secret.encode("utf-8", "surrogateescape")
    forms.add(repr(raw)[2:-1])
    if len(raw) >= 12:
        import base64

        # The part of base64(prefix + secret + suffix) that depends on the secret alone,
        # for each of the three alignments (e.g. basic auth's base64("user:" + secret)).
        for k in range(3):
            enc = base64.b64encode(b"\0" * k + raw).decode()
            start = 4 * -(-k // 3)
            stop = 4 * ((k + len(raw)) // 3)
            if stop - start >= 12:
                forms.add(enc[start:stop])
    return forms


def register_environment(environ: Mapping[str, str] | None = None) -> None:
    """Credentials present at startup: the Hub token wherever huggingface_hub would find it,
    cloud credentials, variables named like a credential (not paths or booleans; masked
    everywhere from 8 characters, as a value below), and the password of any URL with one
    (an endpoint such as `https://user:pw@mirror`)."""
    env = os.environ if environ is None else environ
    for name, value in env.items():
        upper = name.upper()
        if upper in ENV_SECRETS:
            register(value)
        elif upper.endswith(ENV_SUFFIXES) and not upper.endswith(ENV_NOT_SECRET):
            if not value.startswith(("/", "./", "~")) and value.strip().lower() not in ("true", "false", "none", "null"):
                register(value, min_len=MIN_ENV)
        if "://" in value and "@" in value:
            register_url_password(value)
    for path in _stored_token_paths(env):
        try:
            with open(path, "rb") as f:
                register(f.read(4096))
        except OSError:
            pass


def register_url_password(url: str) -> None:
    """The password of a URL's `user:password@` (and `user:password`)."""
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return
    if parts.password:
        register_login(unquote(parts.username or ""), unquote(parts.password))


def register_login(user: str | None, password: str | None) -> None:
    """A user and password: the password, `user:password` and its base64 (basic auth)."""
    import base64

    if not password:
        return
    register(password)
    pair = f"{user or ''}:{password}"
    register(pair)
    register(base64.b64encode(pair.encode("utf-8", "surrogateescape")).decode())


def _stored_token_paths(env: Mapping[str, str]) -> list[str]:
    """Where huggingface_hub keeps a login token (HF_TOKEN_PATH, else <HF_HOME>/token)."""
    if env.get("HF_TOKEN_PATH"):
        return [env["HF_TOKEN_PATH"]]
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "huggingface")
    return [os.path.join(home, "token")]


def active() -> bool:
    return _pattern is not None or _short_pattern is not None


def redact(text: str) -> str:
    """`text` with every registered secret, in any known form or cut short, replaced by ***
    (a short one where it stands as a credential's value)."""
    if not text:
        return text
    if _pattern is not None:
        text = _pattern.sub(MASK, text)
        for secret in _bases:
            if len(secret) > PREFIX:
                text = _mask_prefix(text, secret)
    if _short_pattern is not None:
        text = _short_pattern.sub(lambda m: (m.group(1) or m.group(2) or "") + MASK, text)
    return text


def _mask_prefix(text: str, secret: str) -> str:
    head = secret[:PREFIX]
    i = text.find(head)
    while i != -1:
        j, k = i + PREFIX, PREFIX
        while k < len(secret) and j < len(text) and text[j] == secret[k]:
            j += 1
            k += 1
        text = text[:i] + MASK + text[j:]
        i = text.find(head, i + len(MASK))
    return text


class RedactingStream:
    """A text stream that masks secrets in everything written through it.

    It has no `buffer`: bytes written past the text layer would bypass the mask (click
    then writes text, which is what it does on any ordinary stream)."""

    def __init__(self, stream: IO[str]) -> None:
        self._stream = stream

    @property
    def wrapped(self) -> IO[str]:
        return self._stream

    def write(self, s: str) -> int:
        if not isinstance(s, str):
            raise TypeError(f"write() argument must be str, not {type(s).__name__}")
        self._stream.write(redact(s))
        return len(s)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str):
        if name == "buffer":
            raise AttributeError(name)
        return getattr(self._stream, name)


@contextmanager
def redacting_streams() -> Iterator[None]:
    """sys.stdout and sys.stderr mask secrets for the duration (restored afterwards)."""
    saved = sys.stdout, sys.stderr
    if sys.stdout is not None and not isinstance(sys.stdout, RedactingStream):
        sys.stdout = RedactingStream(sys.stdout)  # type: ignore[assignment]
    if sys.stderr is not None and not isinstance(sys.stderr, RedactingStream):
        sys.stderr = RedactingStream(sys.stderr)  # type: ignore[assignment]
    try:
        yield
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError, AttributeError):
                pass
        sys.stdout, sys.stderr = saved
