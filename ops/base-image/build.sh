#!/usr/bin/env bash
# Build a minimal Debian bookworm base image (python3 + venv + CA certificates)
# without pulling from any registry: debootstrap a root, strip it, `docker import` it.
#
#   ops/base-image/build.sh [IMAGE]        default IMAGE: lane-preflight-base:bookworm
#
# Environment:
#   DEBIAN_MIRROR   mirror URL; default: the first bookworm mirror in apt's sources
#   FORCE=1         rebuild even when IMAGE already exists
# Needs root (debootstrap) and a Docker engine.
set -euo pipefail

image="${1:-lane-preflight-base:bookworm}"
suite=bookworm
packages=python3,python3-venv,ca-certificates

if [[ "${FORCE:-0}" != 1 ]] && docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image already exists (FORCE=1 rebuilds it)"
    exit 0
fi

if ! command -v debootstrap >/dev/null 2>&1; then
    echo "installing debootstrap"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

# Reads one-line ("deb URL suite ...") and deb822 ("URIs:" / "Suites:") source files.
find_mirror() {
    local f
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        awk -v suite="$suite" '
            /^[[:space:]]*deb[[:space:]]/ {
                i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ }
                if ($(i + 1) == suite) { print $i; exit }
            }
            /^URIs:/    { uri = $2 }
            /^Suites:/  { for (j = 2; j <= NF; j++) if ($j == suite && uri != "") { print uri; exit } }
            /^[[:space:]]*$/ { uri = "" }
        ' "$f"
    done | head -n 1
}

mirror="${DEBIAN_MIRROR:-$(find_mirror)}"
if [[ -z "$mirror" ]]; then
    echo "no $suite mirror found in apt sources; set DEBIAN_MIRROR" >&2
    exit 2
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
root="$work/root"

echo "building $image: debootstrap $suite ($packages) from $mirror; this takes a few minutes"
# The full log is kept for a failure; the terminal gets a line per phase and every 20 packages.
debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" 2>&1 \
    | tee "$work/debootstrap.log" \
    | awk '/^I: / { verb = $2; n = (verb == last) ? n + 1 : 1
                    if (verb != last || n % 20 == 0) { print "  debootstrap: " substr($0, 4) (n > 1 ? " (" n ")" : ""); fflush() }
                    last = verb }' || {
    tail -n 40 "$work/debootstrap.log" >&2
    exit 1
}
echo "  stripping the root and importing it into Docker"

# Keep later apt-get installs in derived images as lean as this one.
cat >"$root/etc/dpkg/dpkg.cfg.d/01-lean" <<'CFG'
path-exclude=/usr/share/doc/*
path-exclude=/usr/share/man/*
path-exclude=/usr/share/info/*
path-exclude=/usr/share/locale/*
path-exclude=/usr/share/lintian/*
path-include=/usr/share/doc/*/copyright
CFG
printf 'APT::Install-Recommends "false";\nAPT::Install-Suggests "false";\n' >"$root/etc/apt/apt.conf.d/01-lean"

find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
rm -rf "$root"/usr/share/{man,info,locale,lintian,linda}/* \
       "$root"/var/lib/apt/lists/* \
       "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb \
       "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old \
       "$root"/var/log/* "$root"/tmp/* "$root"/root/.cache
: >"$root/etc/machine-id"
printf 'nameserver 127.0.0.1\n' >"$root/etc/resolv.conf"

tar --numeric-owner -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["/bin/bash"]' \
    --message "debootstrap --variant=minbase $suite + $packages" \
    - "$image" >/dev/null

docker image inspect --format "built $image: {{.Size}} bytes" "$image"
