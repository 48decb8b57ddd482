#!/usr/bin/env bash
# The CNCF distribution registry the OCI tests run against (Debian's docker-registry),
# installed when missing. It is started by the tests themselves (tests/oci_servers.py),
# one per test session on a free 127.0.0.1 port with a temporary config; this script
# starts nothing.
#   bash ops/registry.sh
set -euo pipefail
if command -v docker-registry >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "docker-registry is missing: run as root (apt-get install docker-registry) or install it yourself" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends docker-registry >/dev/null
command -v docker-registry
