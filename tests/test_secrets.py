"""The secret registry: which values are secrets, and every form of one that is masked."""

from __future__ import annotations

import base64
import io
import json
import re
import sys
from urllib.parse import quote, quote_plus

import click
import pytest

from preflight import redact as R

TOKEN = "hf_kQ3vZ8pLm2Xw9Rt5Yb7Nc4Jd6Gh1Fs0Ae"


@pytest.fixture(autouse=True)
def clean():
    R.reset()
    yield
    R.reset()


@pytest.mark.parametrize("form", [
    TOKEN,
    f"Bearer {TOKEN}",
    quote(TOKEN, safe=""),
    quote_plus(f"Bearer {TOKEN}"),
    json.dumps({"authorization": f"Bearer {TOKEN}"}),
    repr(f"Bearer {TOKEN}".encode()),
    "Basic " + base64.b64encode(f"user:{TOKEN}".encode()).decode(),
    "Basic " + base64.b64encode(f"u:{TOKEN}".encode()).decode(),
    "Basic " + base64.b64encode(f"{TOKEN}:".encode()).decode(),
    f"echo: {TOKEN[:12]}",  # a server's echo cut short
    f"{TOKEN}{TOKEN}",
], ids=["plain", "bearer", "url-quoted", "quote-plus", "json", "bytes-repr", "basic-4", "basic-2", "basic-0", "cut-short", "twice"])
def test_every_form_of_a_registered_token_is_masked(form: str) -> None:
    R.register(TOKEN)
    masked = R.redact(f"HTTP 401: {form} (end)")
    assert TOKEN[:8] not in masked and TOKEN[-12:] not in masked, masked
    assert "***" in masked and masked.startswith("HTTP 401: ") and masked.endswith(" (end)")


def test_a_token_file_with_more_lines_masks_each_line() -> None:
    R.register(f"{TOKEN}\r\nsecond-line-value\x00tail-value-here")
    text = R.redact(f"b'Bearer {TOKEN}\\r\\nsecond-line-value' and second-line-value and tail-value-here")
    assert TOKEN[:8] not in text and "second-line-value" not in text and "tail-value-here" not in text


def test_nothing_else_is_touched() -> None:
    assert R.redact(f"no secrets yet: {TOKEN}") == f"no secrets yet: {TOKEN}"
    R.register(TOKEN)
    text = "sha256 0123456789abcdef, lane hf_model, path vllm/tiny, hf_kQ3 (a shorter head)"
    assert R.redact(text) == text
    R.register("abc")  # too short to be a secret: masking it would garble every message
    assert R.redact("abc abcdef") == "abc abcdef"


def test_secrets_from_the_environment() -> None:
    R.register_environment({
        "HF_TOKEN": TOKEN,
        "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        "MY_DB_PASSWORD": "correct-horse-battery",
        "SHORT_TOKEN": "abc12",  # too short
        "SSL_KEY": "/etc/ssl/private/key.pem",  # a path, not a secret
        "FEATURE_TOKEN": "true",
        "GPG_KEY": "A035C8C19219BA821ECEA86B64E628F8D684696D",  # public, set by base images
        "SIGNING_PUBLIC_KEY": "ssh-ed25519-AAAAC3NzaC1lZDI1NTE5",
        "HF_HOME": "/nonexistent-hf-home",
        "PATH": "/usr/bin:/bin",
    })
    text = R.redact(f"{TOKEN} wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY correct-horse-battery abc12 /etc/ssl/private/key.pem "
                    "true A035C8C19219BA821ECEA86B64E628F8D684696D ssh-ed25519-AAAAC3NzaC1lZDI1NTE5 /usr/bin:/bin")
    assert text == ("*** *** *** abc12 /etc/ssl/private/key.pem true A035C8C19219BA821ECEA86B64E628F8D684696D "
                    "ssh-ed25519-AAAAC3NzaC1lZDI1NTE5 /usr/bin:/bin")


def test_the_stored_hub_token_is_a_secret(tmp_path) -> None:
    (tmp_path / "token").write_text(TOKEN + "\n")
    R.register_environment({"HF_HOME": str(tmp_path)})
    assert R.redact(TOKEN) == "***"
    R.reset()
    (tmp_path / "elsewhere").write_text("hf_fromTokenPathVariable123\n")
    R.register_environment({"HF_TOKEN_PATH": str(tmp_path / "elsewhere")})
    assert R.redact("hf_fromTokenPathVariable123") == "***"


def test_the_streams_mask_what_click_and_print_write() -> None:
    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        with R.redacting_streams():
            R.register(TOKEN)
            click.echo(f"to stdout {TOKEN}")
            click.echo(f"to stderr Bearer {TOKEN}", err=True)
            print(f"print {quote(TOKEN)}", file=sys.stderr)
            assert sys.stdout.isatty() is False and sys.stdout.write("abc") == 3
            with pytest.raises(TypeError):
                sys.stdout.write(TOKEN.encode())  # no way around the mask with bytes
            assert not hasattr(sys.stdout, "buffer")
        assert (sys.stdout, sys.stderr) == (out, err)
    finally:
        sys.stdout, sys.stderr = saved
    assert out.getvalue() == "to stdout ***\nabc"
    assert err.getvalue() == "to stderr Bearer ***\nprint ***\n"


@pytest.mark.parametrize("secret", ["x", "k3y", "p4ss5"])
def test_a_short_secret_is_masked_as_a_credentials_value_and_nowhere_else(secret: str) -> None:
    """Below the length a secret is masked at everywhere, it is masked where it stands as a
    credential's value (a whole token), and ordinary text keeps the same word."""
    R.register(secret)
    R.register_login("me", secret)
    b64 = base64.b64encode(f"me:{secret}".encode()).decode()
    for text in (f"password={secret}", f'{{"password": "{secret}"}}', f"Authorization: Bearer {secret}", f"Basic {b64}",
                 f"https://me:{secret}@host/v2/", f"X-Amz-Security-Token={secret}&y=1", f"token {secret}.", f"login me:{secret}",
                 f"'api_key': '{secret}'", f"PASSWORD: {secret}"):
        masked = R.redact(text)
        assert "***" in masked and b64 not in masked, (text, masked)
        assert not re.search(rf"(?<![A-Za-z0-9_-]){re.escape(secret)}(?![A-Za-z0-9_-])", masked), (text, masked)
    for text in (f"a tar archive with {secret} files", f"password={secret}{secret}z", f"{secret}-lane", "the token is valid"):
        assert R.redact(text) == text, text


def test_a_url_password_in_the_environment_is_a_secret() -> None:
    R.register_environment({"HF_ENDPOINT": "https://mirror-user:pw9@mirror.internal/", "PATH": "/usr/bin"})
    assert R.redact("GET https://mirror-user:pw9@mirror.internal/api failed") == "GET https://***@mirror.internal/api failed"
    assert R.redact("pw9 left alone where it is no value") == "pw9 left alone where it is no value"
