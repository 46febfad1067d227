#!/usr/bin/env bash
# Makes the Containerfile's base image without any registry: a minbase bookworm root from
# the Debian mirror this host uses, as a tarball cached under /var/cache/tcpaccept (about
# 50 s the first time), imported into podman under the name the Containerfile asks for.
# Usage: make_base.sh [IMAGE_NAME]   (default docker.io/library/debian:bookworm-slim)
set -euo pipefail
image=${1:-docker.io/library/debian:bookworm-slim}
cache=/var/cache/tcpaccept
tarball=$cache/bookworm-minbase.tar

mirror() {
  # deb822 sources first (Debian 12 default), then the one-line format.
  local uri
  uri=$(grep -hoE '^URIs:[[:space:]]*\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null \
        | awk '{print $2}' | grep -E '/debian/?$' | head -n1 || true)
  [[ -n $uri ]] || uri=$(grep -hoE '^deb[[:space:]]+\S+/debian/?[[:space:]]' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '{print $2}' | head -n1 || true)
  echo "${uri:-http://deb.debian.org/debian}"
}

if [[ ! -s $tarball ]]; then
  mkdir -p "$cache"
  root=$(mktemp -d "$cache/root.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase bookworm "$root" "$(mirror)" >"$cache/debootstrap.log" 2>&1 \
    || { tail -n 20 "$cache/debootstrap.log" >&2; exit 1; }
  # Like the official slim image: no apt lists or caches in the base.
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi

if ! podman image exists "$image"; then
  podman import --change 'CMD ["bash"]' "$tarball" "$image" >/dev/null
fi
echo "$image"
