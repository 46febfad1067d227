#!/usr/bin/env bash
# Builds what tests/vm/guest.py boots under qemu: stock Debian kernels 5.10 (bullseye),
# 6.1 (bookworm) and 6.12 (trixie), each as an uncompressed vmlinux plus a small busybox
# initramfs, and one shared Debian bookworm root filesystem. With ARCH=arm64 the same for
# aarch64 guests (qemu-system-aarch64, software-emulated): the 6.1 and 6.12 kernels and an
# arm64 root filesystem, whose second debootstrap stage runs under qemu-user-static.
# Idempotent: every piece is built into a temporary name, renamed into place when done,
# and reused later; a piece is rebuilt only when its inputs (this script, the guest init,
# the package lists) change. The host's own apt state is never touched: kernels come
# through a private sources list and private state/cache directories.
# Usage: tests/vm/build_guest.sh [CACHE_DIR [ARCH]]   (as root; ARCH amd64 or arm64;
#   default /var/cache/tcpaccept-vm, amd64)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
cache=${1:-/var/cache/tcpaccept-vm}
arch=${2:-amd64}
mirror=http://deb.debian.org/debian
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

# Kernel short name -> the Debian release whose linux-image-$arch provides it.
declare -A suites=([5.10]=bullseye [6.1]=bookworm [6.12]=trixie)
host_packages=(busybox-static debootstrap cpio xz-utils zstd kmod debian-archive-keyring
  python3 util-linux)
# What the tests need inside the guest (libc6-dev: bpftrace's tools include its headers).
rootfs_packages=(python3 python3-venv libbpf1 bpftool bpftrace libc6-dev iproute2
  nginx-light procps util-linux kmod)
case $arch in
amd64)
  kernels=(5.10 6.1 6.12)
  host_packages+=(qemu-system-x86)
  ;;
arm64)
  # Emulated instruction by instruction: a root filesystem without the heavy
  # bpftrace/LLVM (the arm64 guests run tcpaccept's own tests only); its busybox (arm64)
  # also serves the initramfs. 6.12 because arm64 has fexit only since 6.4 (ftrace direct
  # calls): 6.1 answers ENOTSUPP (524).
  kernels=(6.1 6.12)
  # gcc-aarch64-linux-gnu: the io_uring test servers, cross-compiled against the arm64
  # liburing that build_cross_liburing unpacks.
  host_packages+=(qemu-system-arm qemu-user-static binfmt-support gcc-aarch64-linux-gnu)
  rootfs_packages=(python3 python3-venv libbpf1 bpftool iproute2 procps util-linux kmod
    busybox-static)
  ;;
*) echo "build_guest: unknown ARCH '$arch' (amd64 or arm64)" >&2; exit 2 ;;
esac
# Bump when the root filesystem recipe below changes in a way the package list does not
# show; it is part of the digest that decides whether the (slow) debootstrap reruns.
rootfs_recipe=1
# Only what the initramfs needs to reach the 9p shares; modules.dep adds the rest.
initramfs_modules=(virtio_pci 9pnet_virtio 9p overlay)

log() { echo "build_guest: $*" >&2; }
die() {
  log "error: $*"
  exit 1
}

install_host_deps() {
  local missing=() p
  for p in "${host_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' ||
      missing+=("$p")
  done
  ((${#missing[@]})) || return 0
  log "installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Prints a short digest of the given strings and files; stored beside a built piece so
# that a change to its inputs triggers a rebuild.
inputs_digest() {
  local f
  {
    printf '%s\n' "$@"
    for f in "$@"; do
      if [[ -f $f ]]; then cat "$f"; fi
    done
  } |
    sha256sum | cut -c1-16
}

up_to_date() { [[ -f $1 && "$(cat "$1")" == "$2" ]]; }

# debootstrap's second stage runs the guest's own binaries: for another architecture
# through qemu-user-static, registered with binfmt_misc (mounted here if it is not).
enable_foreign_binaries() {
  [[ $arch == amd64 ]] && return 0
  if [[ ! -e /proc/sys/fs/binfmt_misc/status ]]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc || die "cannot mount binfmt_misc"
  fi
  [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || update-binfmts --enable qemu-aarch64 ||
    die "cannot register qemu-aarch64 with binfmt_misc"
}

build_rootfs() {
  local stamp=$cache/rootfs.stamp digest
  # The architecture counts only when not amd64: an existing x86_64 root stays valid.
  local arch_input=()
  [[ $arch == amd64 ]] || arch_input=("$arch")
  digest=$(inputs_digest bookworm "${arch_input[@]}" "$rootfs_recipe" "${rootfs_packages[@]}")
  if up_to_date "$stamp" "$digest" && [[ -d $cache/rootfs ]]; then
    return 0
  fi
  log "debootstrap bookworm root filesystem (a few minutes)"
  local tmp=$cache/rootfs.new
  rm -rf "$tmp"
  local pkgs
  pkgs=$(IFS=,; echo "${rootfs_packages[*]}")
  enable_foreign_binaries
  debootstrap --variant=minbase --arch="$arch" --include="$pkgs" --keyring="$keyring" \
    bookworm "$tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
    die "debootstrap failed, see $cache/debootstrap.log"
  # Nothing in the guest fetches packages; drop the indexes and the downloaded debs.
  rm -rf "$tmp"/var/lib/apt/lists/* "$tmp"/var/cache/apt/archives/*.deb
  echo tcpaccept-guest >"$tmp/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$tmp/etc/hosts"
  rm -rf "$cache/rootfs"
  mv "$tmp" "$cache/rootfs"
  echo "$digest" >"$stamp"
}

# Sets apt_opts to an apt configuration that reads and writes only under $1 and lists
# only suite $2, so the host's sources, lists and package cache stay as they were.
private_apt() {
  local dir=$1 suite=$2
  mkdir -p "$dir/etc/sources.list.d" "$dir/etc/preferences.d" "$dir/state/lists/partial" \
    "$dir/cache/archives/partial"
  cat >"$dir/etc/debian.sources" <<EOF
Types: deb
URIs: $mirror
Suites: $suite
Components: main
Signed-By: $keyring
EOF
  touch "$dir/state/status"
  apt_opts=(-o "Dir::Etc::sourcelist=$dir/etc/debian.sources"
    -o "Dir::Etc::sourceparts=$dir/etc/sources.list.d"
    -o "Dir::Etc::preferences=$dir/etc/preferences"
    -o "Dir::Etc::preferencesparts=$dir/etc/preferences.d"
    -o "Dir::State=$dir/state" -o "Dir::State::status=$dir/state/status"
    -o "Dir::Cache=$dir/cache" -o "APT::Architecture=$arch" -o "Acquire::Languages=none"
    -o "APT::Sandbox::User=root")
}

# Downloads the kernel package behind linux-image-$arch of a suite into $kdir/deb/.
download_kernel() {
  local short=$1 suite=$2 kdir=$3 pkg
  private_apt "$kdir/apt" "$suite"
  apt-get "${apt_opts[@]}" -qq update >/dev/null || die "apt-get update for $suite failed"
  pkg=$(apt-cache "${apt_opts[@]}" depends "linux-image-$arch" |
    awk '$1 == "Depends:" && $2 ~ /^linux-image-/ { print $2; exit }')
  [[ $pkg == linux-image-"$short".* ]] || die "$suite: linux-image-$arch gives '$pkg', not $short"
  log "$suite: downloading $pkg"
  rm -rf "$kdir/deb"
  mkdir -p "$kdir/deb"
  (cd "$kdir/deb" && apt-get "${apt_opts[@]}" -qq download "$pkg") || die "download $pkg"
}

# Unpacks the package into $kdir/pkg with its modules under pkg/lib/modules (trixie ships
# them under usr/lib) and a modules.dep, which the package leaves to its postinst.
unpack_kernel() {
  local kdir=$1 release
  rm -rf "$kdir/pkg"
  dpkg-deb -x "$kdir"/deb/*.deb "$kdir/pkg"
  release=$(basename "$(ls "$kdir"/pkg/boot/vmlinuz-*)")
  release=${release#vmlinuz-}
  if [[ ! -e $kdir/pkg/lib && -d $kdir/pkg/usr/lib/modules ]]; then
    ln -s usr/lib "$kdir/pkg/lib"
  fi
  [[ -d $kdir/pkg/lib/modules/$release ]] || die "no modules for $release"
  depmod -b "$kdir/pkg" "$release"
  echo "$release" >"$kdir/release.new"
}

# Prints, dependencies first, the module files (relative to the modules dir) that
# load the wanted modules; built-in ones are skipped, unknown ones are an error.
module_load_order() {
  local moddir=$1
  shift
  awk -v want="$*" -v builtin="$moddir/modules.builtin" '
    function norm(s) { sub(/.*\//, "", s); sub(/\.ko(\.[a-z0-9]+)?$/, "", s); gsub(/-/, "_", s); return s }
    BEGIN { while ((getline line < builtin) > 0) isbuiltin[norm(line)] = 1 }
    {
      path = $1; sub(/:$/, "", path); name = norm(path); file[name] = path
      deps[name] = ""
      # modprobe inserts the listed dependencies last-to-first.
      for (i = NF; i >= 2; i--) deps[name] = deps[name] " " $i
    }
    END {
      n = split(want, w, " ")
      for (i = 1; i <= n; i++) {
        m = w[i]; gsub(/-/, "_", m)
        if (!(m in file)) { if (!(m in isbuiltin)) print "MISSING:" m; continue }
        k = split(deps[m], d, " ")
        for (j = 1; j <= k; j++) if (!(d[j] in seen)) { seen[d[j]] = 1; print d[j] }
        if (!(file[m] in seen)) { seen[file[m]] = 1; print file[m] }
      }
    }' "$moddir/modules.dep"
}

build_initramfs() {
  local kdir=$1 release moddir stage order m name
  release=$(cat "$kdir/release.new" 2>/dev/null || cat "$kdir/release")
  moddir=$kdir/pkg/lib/modules/$release
  stage=$kdir/initramfs.d
  rm -rf "$stage"
  mkdir -p "$stage/bin" "$stage/dev" "$stage/modules"
  # The guest's own busybox: the host's for amd64, the arm64 root filesystem's for arm64.
  if [[ $arch == amd64 ]]; then
    cp /bin/busybox "$stage/bin/busybox"
  else
    cp "$cache/rootfs/bin/busybox" "$stage/bin/busybox"
  fi
  install -m 0755 "$here/guest_init.sh" "$stage/init"
  # The kernel opens /dev/console for init before anything can mount devtmpfs.
  mknod -m 600 "$stage/dev/console" c 5 1
  order=$(module_load_order "$moddir" "${initramfs_modules[@]}")
  if grep -q '^MISSING:' <<<"$order"; then
    die "$release lacks modules: $(grep '^MISSING:' <<<"$order" | tr '\n' ' ')"
  fi
  : >"$stage/modules.load"
  for m in $order; do
    name=$(basename "$m")
    # busybox insmod cannot read compressed modules (trixie ships .ko.xz).
    case $name in
    *.ko.xz) xz -dc "$moddir/$m" >"$stage/modules/${name%.xz}" ;;
    *.ko.zst) zstd -qdc "$moddir/$m" >"$stage/modules/${name%.zst}" ;;
    *.ko.gz) gzip -dc "$moddir/$m" >"$stage/modules/${name%.gz}" ;;
    *) cp "$moddir/$m" "$stage/modules/$name" ;;
    esac
    echo "${name%.ko*}.ko" >>"$stage/modules.load"
  done
  # Left uncompressed: unpacking it would cost more boot time under TCG than reading it.
  (cd "$stage" && find . | cpio -o -H newc --quiet) >"$kdir/initramfs.img.new"
  mv "$kdir/initramfs.img.new" "$kdir/initramfs.img"
  rm -rf "$stage"
}

build_kernel() {
  local short=$1 suite=${suites[$1]} kdir=$cache/kernels/$1 digest release
  digest=$(inputs_digest "$suite" "$arch" "${initramfs_modules[@]}" "$here/build_guest.sh" \
    "$here/guest_init.sh" "$here/extract_vmlinux.py")
  if up_to_date "$kdir/stamp" "$digest" && [[ -f $kdir/release ]]; then
    return 0
  fi
  mkdir -p "$kdir"
  rm -f "$kdir/stamp"
  # The download is kept across rebuilds: only a missing .deb goes to the network.
  compgen -G "$kdir/deb/*.deb" >/dev/null || download_kernel "$short" "$suite" "$kdir"
  unpack_kernel "$kdir"
  release=$(cat "$kdir/release.new")
  log "$suite: kernel $release"
  if [[ $arch == amd64 ]]; then
    /usr/bin/python3 "$here/extract_vmlinux.py" "$kdir/pkg/boot/vmlinuz-$release" \
      "$kdir/vmlinux.new" || die "cannot extract vmlinux of $release"
  else
    # arm64's vmlinuz is the kernel's Image, gzip-compressed or not; qemu boots both.
    cp "$kdir/pkg/boot/vmlinuz-$release" "$kdir/vmlinux.new"
  fi
  mv "$kdir/vmlinux.new" "$kdir/vmlinux"
  build_initramfs "$kdir"
  mv "$kdir/release.new" "$kdir/release"
  echo "$digest" >"$kdir/stamp"
}

# arm64: liburing-dev (headers, static library) of bookworm unpacked under $cache/liburing,
# for cross-compiling the io_uring test servers (tests/support/uring).
build_cross_liburing() {
  local dir=$cache/liburing digest
  digest=$(inputs_digest bookworm "$arch" liburing-dev)
  if up_to_date "$dir.stamp" "$digest" && [[ -d $dir/usr/include ]]; then
    return 0
  fi
  private_apt "$cache/liburing-apt" bookworm
  apt-get "${apt_opts[@]}" -qq update >/dev/null || die "apt-get update for liburing failed"
  rm -rf "$cache/liburing-apt/deb" "$dir"
  mkdir -p "$cache/liburing-apt/deb"
  (cd "$cache/liburing-apt/deb" && apt-get "${apt_opts[@]}" -qq download liburing-dev) ||
    die "download liburing-dev ($arch)"
  dpkg-deb -x "$cache"/liburing-apt/deb/*.deb "$dir"
  echo "$digest" >"$dir.stamp"
}

main() {
  [[ $(id -u) == 0 ]] || die "must run as root (apt, debootstrap, mknod)"
  mkdir -p "$cache/kernels"
  # One build at a time per cache, e.g. two pytest sessions starting together.
  exec 9>"$cache/.lock"
  flock 9
  install_host_deps
  # First the root filesystem: an arm64 initramfs takes its busybox.
  build_rootfs
  local short
  for short in "${kernels[@]}"; do
    build_kernel "$short"
  done
  [[ $arch == amd64 ]] || build_cross_liburing
  log "ready in $cache"
}

main "$@"
