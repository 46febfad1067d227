"""Builds the image for each platform and the manifest list that joins them, without a
registry: the bases come from tests/fleet/make_base.sh (debootstrap, cached), the arm64 one
under a name of its own (RUNTIME_BASE), since the local store keeps one image per name.

Shared by tests/fleet/test_image.py (the manifest list) and tests/vm/test_arm64.py (the
arm64 image's --check inside an arm64 guest). podman keeps every layer: an unchanged
checkout rebuilds in seconds, and only the final stage of the arm64 half runs emulated.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BASE = "docker.io/library/debian:bookworm-slim"
ARM64_BASE = "localhost/tcpaccept-base:bookworm-slim-arm64"
# Tags of their own (the layers are shared with test_image.py's build): what the manifest
# list holds is what these builds made, whatever else tags fleet-test meanwhile.
AMD64_IMAGE = "localhost/tcpaccept:fleet-test-amd64"
ARM64_IMAGE = "localhost/tcpaccept:fleet-test-arm64"
MANIFEST = "localhost/tcpaccept:fleet-test-multiarch"
# Measured on this host: root lacks CAP_SYS_RESOURCE, so podman cannot raise rlimits, and
# crun is not installed.
PODMAN = ["podman", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"


def podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)


def make_base(name: str, arch: str) -> None:
    base = subprocess.run(["bash", str(ROOT / "tests" / "fleet" / "make_base.sh"), name, arch],
                          capture_output=True, text=True, timeout=1200)
    assert base.returncode == 0, base.stderr


def build(tag: str, platform: str, *extra: str) -> None:
    """podman build of the Containerfile for one platform (linux/amd64 or linux/arm64)."""
    # The build stage fetches prometheus-client from PyPI; this host reaches it through a
    # TLS-intercepting proxy whose CA is in the host's bundle (the Containerfile's secret).
    secret = ["--secret", f"id=pip-ca,src={HOST_CA}"] if os.path.exists(HOST_CA) else []
    # podman 4.3 does not set BUILDPLATFORM (the build stage's, this host's) by itself.
    host = {"x86_64": "amd64", "aarch64": "arm64"}[os.uname().machine]
    built = podman("build", "--pull=never", "--platform", platform, *ULIMITS, *secret,
                   "--build-arg", f"BUILDPLATFORM=linux/{host}", *extra,
                   "-t", tag, "-f", str(ROOT / "Containerfile"), str(ROOT), timeout=1500)
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]


def build_amd64() -> str:
    make_base(BASE, "amd64")
    build(AMD64_IMAGE, "linux/amd64")
    return AMD64_IMAGE


def build_arm64() -> str:
    """The linux/arm64 image: the build stage on this host's base (native), the final stage
    on the arm64 base under qemu-user-static."""
    make_base(BASE, "amd64")
    make_base(ARM64_BASE, "arm64")
    build(ARM64_IMAGE, "linux/arm64", "--build-arg", f"RUNTIME_BASE={ARM64_BASE}")
    return ARM64_IMAGE


def manifest_list(images: list[str]) -> str:
    """A fresh manifest list MANIFEST holding the given local images."""
    if podman("manifest", "exists", MANIFEST).returncode == 0:
        podman("manifest", "rm", MANIFEST)
    created = podman("manifest", "create", MANIFEST)
    assert created.returncode == 0, created.stderr
    for image in images:
        added = podman("manifest", "add", MANIFEST, f"containers-storage:{image}")
        assert added.returncode == 0, added.stderr
    return MANIFEST


def export_rootfs(image: str, dest: Path) -> Path:
    """The image's filesystem unpacked under dest (what a runtime would run)."""
    name = f"tcpaccept-export-{os.getpid()}"
    created = podman("create", "--name", name, image)
    assert created.returncode == 0, created.stderr
    try:
        dest.mkdir(parents=True, exist_ok=True)
        export = subprocess.Popen([*PODMAN, "export", name], stdout=subprocess.PIPE)
        unpacked = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=export.stdout,
                                  capture_output=True, text=True, timeout=300)
        assert export.wait(60) == 0 and unpacked.returncode == 0, unpacked.stderr
    finally:
        podman("rm", "-f", name)
    return dest
