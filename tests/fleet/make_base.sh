#!/usr/bin/env bash
# Makes the Containerfile's base image without any registry: a minbase bookworm root from
# the Debian mirror this host uses, as a tarball cached under /var/cache/tcpaccept (about
# 50 s the first time), imported into podman under the name the Containerfile asks for.
# ARCH arm64 makes the arm64 base (debootstrap's second stage under qemu-user-static, about
# 4 minutes the first time) for the image's linux/arm64 half.
# Usage: make_base.sh [IMAGE_NAME [ARCH]]   (default docker.io/library/debian:bookworm-slim amd64)
set -euo pipefail
image=${1:-docker.io/library/debian:bookworm-slim}
arch=${2:-amd64}
cache=/var/cache/tcpaccept
tarball=$cache/bookworm-minbase-slim.tar
[[ $arch == amd64 ]] || tarball=$cache/bookworm-minbase-slim-$arch.tar

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
  if [[ $arch != amd64 && ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    [[ -e /proc/sys/fs/binfmt_misc/status ]] ||
      mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    update-binfmts --enable qemu-aarch64
  fi
  debootstrap --variant=minbase --arch="$arch" bookworm "$root" "$(mirror)" \
    >"$cache/debootstrap-$arch.log" 2>&1 || { tail -n 20 "$cache/debootstrap-$arch.log" >&2; exit 1; }
  # Like the official slim image: no documentation, manuals or translations (now and in
  # every package installed later), no apt lists or caches.
  cat >"$root/etc/dpkg/dpkg.cfg.d/slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/groff/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
CFG
  find "$root/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/groff/* \
         "$root"/usr/share/lintian/* "$root"/usr/share/linda/*
  find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
  tar -C "$root" --numeric-owner -cf "$tarball.tmp" .
  mv "$tarball.tmp" "$tarball"
fi

if ! podman image exists "$image"; then
  podman import --arch "$arch" --change 'CMD ["bash"]' "$tarball" "$image" >/dev/null
fi
echo "$image"
