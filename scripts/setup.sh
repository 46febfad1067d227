#!/usr/bin/env bash
# Installs everything tcpaccept needs on Debian 12 (as root) and builds it into ./.venv.
# Idempotent: a second run only rebuilds what changed. Usage: scripts/setup.sh [--test]
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=0
[[ "${1:-}" == "--test" ]] && want_test=1

# Build-time: clang for the CO-RE object. Run-time: only libbpf1 and Python.
packages=(libbpf1 libbpf-dev linux-libc-dev clang make python3 python3-venv)
if ((want_test)); then
  # Real servers, traffic tools and the peers the tests compare against.
  packages+=(nginx-light bpftool bpftrace iproute2 libc6-dev wrk)
  # Containers (issue: containers), a real Prometheus (fleet), io_uring servers, the image base.
  packages+=(podman runc busybox-static uidmap docker.io containerd prometheus liburing-dev
             debootstrap man-db catatonit)  # catatonit: podman kube play's pause process
  # arm64 (issue 23): the image's linux/arm64 half and the arm64 base under qemu-user, the
  # arm64 guests (qemu-system-aarch64), their io_uring server cross-compiled (the cross C
  # library's headers are only a Recommends of the cross compiler: named here).
  packages+=(qemu-user-static binfmt-support qemu-system-arm gcc-aarch64-linux-gnu
             libc6-dev-arm64-cross)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if ((want_test)); then
  # The Debian nginx package starts a server on :80 at install; tests start their own.
  # Same for the container engines and Prometheus: tests start their own, on loopback.
  for service in nginx prometheus docker docker.socket containerd; do
    systemctl disable --now "$service" >/dev/null 2>&1 || true
  done
fi

make -s -C src/tcpaccept/bpf
# tcpaccept(8) where man-db looks by default, so `man tcpaccept` works (the wheel carries it too).
install -D -m 0644 man/tcpaccept.8 /usr/local/share/man/man8/tcpaccept.8

# Debian's own interpreter, so the venv also runs inside the qemu guests (same bookworm rootfs).
if [[ ! -x .venv/bin/python ]]; then
  /usr/bin/python3 -m venv .venv
fi
extra=""
((want_test)) && extra="[test]"
stamp=".venv/.installed${extra}"
if [[ ! -f "$stamp" || pyproject.toml -nt "$stamp" ]]; then
  .venv/bin/pip install -q --disable-pip-version-check -e ".${extra}"
  touch "$stamp"
fi
