"""KServe's storage-initializer conventions, so `preflight SRC DEST` is a drop-in for it.

Read from KServe's own code (kserve/kserve, python/storage/kserve_storage/kserve_storage.py,
pkg/credentials/…, pkg/webhook/admission/pod/storage_initializer_injector.go): the URI
forms its initializer accepts and the environment its webhook gives the init container.
Pure: strings and mappings in, strings and mappings out; the caller applies them.

- `hf://OWNER/MODEL:REVISION` (KServe's form) is `hf://OWNER/MODEL@REVISION`.
- A `#sha256=<64 hex>` fragment pins what the URI names (a file, or an archive); a URL's
  fragment never reaches its server.
- `STORAGE_CONFIG` (the storage-config Secret's entry) and `STORAGE_OVERRIDE_CONFIG` (the
  storage spec's parameters), type s3: endpoint_url, access_key_id, secret_access_key,
  region, ca_bundle, verify_ssl, anonymous become the variables KServe sets from them.
- `STORAGE_ALLOW_PATTERNS` / `STORAGE_IGNORE_PATTERNS` (a JSON list or comma-separated
  fnmatch globs) are the lane's include / exclude.
- The S3 variables (S3_ENDPOINT, S3_USE_HTTPS, S3_VERIFY_SSL, awsAnonymousCredential,
  AWS_CA_BUNDLE, S3_USER_VIRTUAL_BUCKET, S3_USE_ACCELERATE) are read by sources/s3_client.py
  for every s3:// lane; HF_TOKEN by sources/hf.py; `<host>-headers` here for https:// URLs.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from .errors import UsageError

_HF_COLON = re.compile(r"^hf://([^/@:]+)/([^/@:]+):([^/@:]+)$")
_SHA256_FRAGMENT = re.compile(r"#sha256=([0-9a-fA-F]{64})$")

# storage-config key → the variable KServe's initializer sets (Storage._update_with_storage_spec)
S3_CONFIG_KEYS = (
    ("endpoint_url", "AWS_ENDPOINT_URL"),
    ("access_key_id", "AWS_ACCESS_KEY_ID"),
    ("secret_access_key", "AWS_SECRET_ACCESS_KEY"),
    ("region", "AWS_DEFAULT_REGION"),
    ("ca_bundle", "AWS_CA_BUNDLE"),
    ("verify_ssl", "S3_VERIFY_SSL"),
    ("anonymous", "awsAnonymousCredential"),
)


def storage_uri(raw: str) -> tuple[str, str | None]:
    """(the URI as preflight spells it, the sha256 a `#sha256=` fragment pins or None)."""
    uri = raw.strip()
    pin = None
    m = _SHA256_FRAGMENT.search(uri)
    if m:
        pin = m.group(1).lower()
        uri = uri[: m.start()]
    hf = _HF_COLON.match(uri)
    if hf:
        uri = f"hf://{hf.group(1)}/{hf.group(2)}@{hf.group(3)}"
    return uri, pin


def storage_config(env: Mapping[str, str]) -> dict[str, str]:
    """The variables a storage-config entry sets (KServe lets them override the environment)."""
    def parse(name: str) -> dict:
        raw = env.get(name, "").strip()
        if not raw:
            return {}
        try:
            value = json.loads(raw)
        except ValueError:
            raise UsageError(f"{name} is not JSON (KServe passes the storage-config Secret's entry there)") from None
        if not isinstance(value, dict):
            raise UsageError(f"{name} is not a JSON object")
        return value

    config = {**parse("STORAGE_CONFIG"), **parse("STORAGE_OVERRIDE_CONFIG")}
    if config.get("type", "") != "s3":
        return {}
    out = {}
    for key, var in S3_CONFIG_KEYS:
        if key in config and config[key] is not None:
            out[var] = str(config[key])
    return out


def oci_settings(env: Mapping[str, str], uri: str) -> dict[str, str]:
    """What KServe's OCI fetch mode gives its initializer, as preflight's own settings: the
    Docker config it mounts (KSERVE_OCI_DOCKER_CONFIG, else /mnt/oci-fetch-auth/config.json
    when that file is there) and KSERVE_OCI_INSECURE_REGISTRY=true for the URI's registry.
    Preflight's own PREFLIGHT_REGISTRY_AUTH / PREFLIGHT_INSECURE_REGISTRY win."""
    import os.path

    if not uri.startswith("oci://"):
        return {}
    out: dict[str, str] = {}
    config = env.get("KSERVE_OCI_DOCKER_CONFIG", "").strip() or "/mnt/oci-fetch-auth/config.json"
    if not env.get("PREFLIGHT_REGISTRY_AUTH") and os.path.isfile(config):
        out["PREFLIGHT_REGISTRY_AUTH"] = config
    if env.get("KSERVE_OCI_INSECURE_REGISTRY", "").strip().lower() in ("1", "true", "yes") and not env.get("PREFLIGHT_INSECURE_REGISTRY"):
        out["PREFLIGHT_INSECURE_REGISTRY"] = uri[len("oci://"):].split("/", 1)[0]
    return out


def patterns(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """STORAGE_ALLOW_PATTERNS / STORAGE_IGNORE_PATTERNS as KServe parses them."""
    raw = env.get(name, "").strip()
    if not raw:
        return ()
    try:
        parsed = json.loads(raw)
    except ValueError:
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    items = parsed if isinstance(parsed, list) else [parsed]
    return tuple(str(p).strip() for p in items if str(p).strip())


def url_headers(env: Mapping[str, str], host: str) -> dict[str, str]:
    """Headers KServe's https secret gives a host: `<host>-headers` holding a JSON object."""
    raw = env.get(f"{host}-headers", "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise UsageError(f"{host}-headers is not JSON (KServe's https secret: a JSON object of headers)") from None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise UsageError(f"{host}-headers is not a JSON object of string headers")
    bad = [k for k, v in value.items() if any(c in k + v for c in "\r\n\x00")]
    if bad:
        raise UsageError(f"{host}-headers holds a header with a line break ({bad[0]!r})")
    return dict(value)
