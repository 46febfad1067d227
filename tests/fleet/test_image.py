"""The container image: built with podman from a base made by debootstrap (no registry), no
compiler inside, and run as the DaemonSet runs it (its arguments, capabilities, read-only
root and host mounts, read from deploy/kubernetes/daemonset.yaml) it counts the accepts of
a server on the host.

podman's default seccomp profile (containers-common 0.50) allows bpf() and perf_event_open()
only with SYS_ADMIN: a run under it shows the refusal and the agent's one-line seccomp
message, and the working runs use the shipped Localhost profile
(deploy/kubernetes/seccomp/tcpaccept.json, not seccomp=unconfined). The mounts are the
rendered kustomization's with the CRI-O component instead of containerd's (podman's run root
is CRI-O's), plus
podman's containers.json, which CRI-O nodes do not need (see mounts()).
Measured here: base 32-190 s (the mirror's speed; then cached in /var/cache/tcpaccept),
cold build 44-125 s (apt downloads), rebuild after a source change ~20 s, unchanged ~3 s.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.fleet import images
from tests.fleet.deployment import (
    KUBERNETES,
    ROOT,
    accepts_on_port,
    agent_args,
    daemonset,
    granted_capabilities,
    host_mounts,
    rendered_for_runtime,
    samples,
    scrape,
)
from tests.support.child import free_port
from tests.support.servers import connect, start_server

IMAGE = "localhost/tcpaccept:fleet-test"
BUILD_STAGE = "localhost/tcpaccept-build:fleet-test"
BASE = "docker.io/library/debian:bookworm-slim"
# Measured on this host: root lacks CAP_SYS_RESOURCE, so podman cannot raise rlimits, and
# crun is not installed.
PODMAN = ["podman", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=4096:4096"]
HOST_CA = "/etc/ssl/certs/ca-certificates.crt"
SHIPPED_SECCOMP = str(KUBERNETES / "seccomp" / "tcpaccept.json")
# podman names its containers in the graph root's containers.json; that directory also
# holds conmon's attach sockets, so no shipped component mounts it: the tests add the one
# directory for podman's names (a Kubernetes node's CRI-O needs only the run root).
PODMAN_NAMES = ("/var/lib/containers/storage/overlay-containers",
                "/host/var/lib/containers/storage/overlay-containers")


def podman(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def image() -> str:
    assert os.geteuid() == 0, "the image test needs root (podman, BPF)"
    assert shutil.which("podman") and shutil.which("debootstrap"), \
        "podman/debootstrap missing: bash scripts/setup.sh --test"
    base = subprocess.run(["bash", str(ROOT / "tests" / "fleet" / "make_base.sh"), BASE],
                          capture_output=True, text=True, timeout=900)
    assert base.returncode == 0, base.stderr
    started = time.monotonic()
    # The build stage fetches prometheus-client from PyPI; this host reaches it through a
    # TLS-intercepting proxy whose CA is in the host's bundle (the Containerfile's secret).
    secret = ["--secret", f"id=pip-ca,src={HOST_CA}"] if os.path.exists(HOST_CA) else []
    previous = {tag: image_id(tag) for tag in (BUILD_STAGE, IMAGE)}
    # The build stage is tagged too: its layers are the cache of the next run, and an
    # untagged stage would pile up as a dangling image at every source change.
    for target in (["--target", "build", "-t", BUILD_STAGE], ["-t", IMAGE]):
        build = podman("build", "--pull=never", *ULIMITS, *secret, *target, "-f",
                       str(ROOT / "Containerfile"), str(ROOT), timeout=900)
        assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    for tag, old in previous.items():
        if old and old != image_id(tag):
            podman("rmi", old)  # the previous run's image, replaced (in use: kept)
    size = podman("image", "inspect", "--format", "{{.Size}}", IMAGE).stdout.strip()
    print(f"image build {time.monotonic() - started:.1f} s, size {int(size) / 1e6:.0f} MB")
    return IMAGE


def image_id(name: str) -> str:
    found = podman("image", "inspect", "--format", "{{.Id}}", name)
    return found.stdout.strip() if found.returncode == 0 else ""


def mounts(work: Path) -> list[tuple[str, str]]:
    """The rendered DaemonSet's mounts with the CRI-O component, and podman's names."""
    os.makedirs("/run/containers/storage/overlay-containers", exist_ok=True)  # podman's
    ds = daemonset(rendered_for_runtime("runtime-cri-o", work))
    found = []
    for host, inside, read_only in host_mounts(ds):
        assert read_only
        found.append((host, inside))
    return [*found, PODMAN_NAMES]


def run_argv(image: str, args: list[str], *, seccomp: str = "", publish: str = "",
             work: Path) -> list[str]:
    """`podman run` with what the DaemonSet grants and nothing else; seccomp: a profile
    (path or "unconfined") instead of podman's default."""
    argv = [*PODMAN, "run", "--rm", *ULIMITS, "--pid=host", "--read-only", "--user", "0",
            "--cap-drop=all", f"--cap-add={','.join(granted_capabilities())}"]
    if seccomp:
        argv += ["--security-opt", f"seccomp={seccomp}"]
    for host, inside in mounts(work):
        argv += ["-v", f"{host}:{inside}:ro"]
    if publish:
        argv += ["-p", publish]
    return [*argv, image, *args]


def test_image_carries_oci_labels_of_the_package(image: str) -> None:
    labels = json.loads(podman("image", "inspect", "--format", "{{json .Labels}}", image).stdout)
    package = importlib.metadata.metadata("tcpaccept")  # pyproject.toml, as installed
    assert labels["org.opencontainers.image.title"] == package["Name"]
    assert labels["org.opencontainers.image.version"] == package["Version"]
    assert labels["org.opencontainers.image.description"] == package["Summary"]
    assert labels["org.opencontainers.image.licenses"] == package["License"]
    assert labels["org.opencontainers.image.base.name"] == BASE
    # the image's own default arguments are the DaemonSet's
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config.Cmd}}",
                               image).stdout)
    assert config == agent_args("[::]:9435", "/host")


def test_final_image_has_runtime_but_no_compiler(image: str) -> None:
    probe = podman("run", "--rm", *ULIMITS, "--entrypoint", "sh", image, "-c",
                   "for t in clang gcc cc ld.lld llc; do command -v $t; done; "
                   "ls /usr/lib/*/libbpf.so.1 /usr/local/share/man/man8/tcpaccept.8; "
                   "python3 -m tcpaccept --version")
    assert probe.returncode == 0, probe.stderr
    lines = probe.stdout.split()
    assert not [line for line in lines if line.startswith("/usr/bin/")], probe.stdout
    assert "tcpaccept 0.1.0" in probe.stdout


def test_default_seccomp_profile_refuses_bpf_without_sys_admin(image: str,
                                                               tmp_path: Path) -> None:
    # Why the shipped Localhost profile exists, and what the agent says under such a default.
    result = subprocess.run(run_argv(image, ["--check"], work=tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert "auto would pick: none" in result.stdout, result.stdout + result.stderr
    agent = subprocess.run(run_argv(image, agent_args("[::]:9435", "/host"), work=tmp_path),
                           capture_output=True, text=True, timeout=120)
    assert agent.returncode != 0
    lines = agent.stderr.strip().splitlines()
    assert len(lines) == 1 and "seccomp" in lines[0], agent.stderr


def test_shipped_seccomp_profile_is_enough(image: str, tmp_path: Path) -> None:
    result = subprocess.run(run_argv(image, ["--check"], seccomp=SHIPPED_SECCOMP,
                                     work=tmp_path),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "auto would pick: none" not in result.stdout


@pytest.fixture
def agent(image: str, tmp_path: Path) -> Iterator[tuple[int, str]]:
    """The agent with the DaemonSet's arguments, metrics published on a loopback port."""
    port = free_port()
    name = f"tcpaccept-fleet-{os.getpid()}"
    argv = run_argv(image, agent_args("[::]:9435", "/host"), seccomp=SHIPPED_SECCOMP,
                    publish=f"127.0.0.1:{port}:9435", work=tmp_path)
    argv.insert(argv.index("--rm") + 1, f"--name={name}")
    print("agent:", " ".join(argv))
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"agent exited {proc.returncode}: {proc.stderr.read()}"
            try:
                text = scrape(f"http://127.0.0.1:{port}/metrics", timeout=2)
                if "tcpaccept_lost_events_total" in text:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "agent metrics never came up"
            time.sleep(0.2)
        yield port, name
    finally:
        podman("stop", "-t", "5", name, timeout=60)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def agent_rss_kb(name: str) -> int:
    pid = podman("inspect", "--format", "{{.State.Pid}}", name).stdout.strip()
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def test_agent_counts_accepts_of_a_host_server(agent: tuple[int, str]) -> None:
    metrics_port, name = agent
    accepts = 7
    with start_server(comm="fleet-host") as server:
        for _ in range(accepts):
            client = connect("127.0.0.1", server.port)
            server.accept(1)
            client.close()
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 10
        while accepts_on_port(scrape(url), server.port) < accepts:
            assert time.monotonic() < deadline, scrape(url)
            time.sleep(0.2)
        time.sleep(0.5)  # nothing more may arrive: exactly what the server accepted
        assert accepts_on_port(scrape(url), server.port) == accepts
    print(f"agent RSS {agent_rss_kb(name) / 1024:.1f} MB")


WORKLOAD = """
import socket, time
server = socket.socket()
server.bind(("127.0.0.1", 8080))
server.listen(16)
for _ in range({n}):
    client = socket.create_connection(("127.0.0.1", 8080))
    server.accept()[0].close()
    client.close()
print("done", flush=True)
time.sleep(60)
"""


def test_agent_names_the_container_of_an_accept(agent: tuple[int, str], image: str) -> None:
    # A workload container in its own network namespace: the agent must attribute its
    # accepts to it by name, from the runtime state mounted under /host.
    metrics_port, _ = agent
    accepts = 4
    name = f"fleet-web-{os.getpid()}"
    started = podman("run", "-d", "--rm", *ULIMITS, "--name", name, "--network", "none",
                     "--entrypoint", "python3", image, "-c", WORKLOAD.format(n=accepts))
    assert started.returncode == 0, started.stderr
    try:
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        deadline = time.monotonic() + 15
        while True:
            named = [(labels, value) for labels, value in
                     samples(scrape(url), "tcpaccept_accepts_total")
                     if labels.get("container") == name]
            if named and sum(value for _, value in named) >= accepts:
                break
            assert time.monotonic() < deadline, scrape(url)
            time.sleep(0.2)
        assert [(labels["lport"], value) for labels, value in named] == [("8080", accepts)]
    finally:
        podman("rm", "-f", "-t", "0", name, timeout=60)


@pytest.fixture(scope="module")
def platform_images() -> tuple[str, str]:
    started = time.monotonic()
    amd64 = images.build_amd64()
    arm64 = images.build_arm64()
    print(f"amd64 + arm64 image builds {time.monotonic() - started:.1f} s")
    return amd64, arm64


def test_manifest_list_holds_amd64_and_arm64_each_with_its_object(
        platform_images: tuple[str, str]) -> None:
    image, arm64_image = platform_images
    name = images.manifest_list([image, arm64_image])
    inspect = podman("manifest", "inspect", name)
    assert inspect.returncode == 0, inspect.stderr
    platforms = sorted((m["platform"]["os"], m["platform"]["architecture"])
                       for m in json.loads(inspect.stdout)["manifests"])
    assert platforms == [("linux", "amd64"), ("linux", "arm64")], inspect.stdout
    # Under qemu-user here: the arm64 half's python3 is aarch64 and its object holds arm64's
    # pt_regs (orig_x0, syscallno in its BTF), the amd64 half's x86's (orig_ax). It runs
    # --check in an arm64 kernel in tests/vm/test_arm64.py.
    for tag, platform, machine, fields in ((image, "linux/amd64", "x86_64", "orig_ax"),
                                           (arm64_image, "linux/arm64", "aarch64",
                                            "orig_x0 syscallno")):
        probe = podman("run", "--rm", "--platform", platform, *ULIMITS, "--entrypoint",
                       "python3", tag, "-c",
                       "import platform, tcpaccept.event as e; o = e.PACKAGED_OBJECT.read_bytes();"
                       " print(platform.machine(), *(f for f in ('orig_ax', 'orig_x0', 'syscallno')"
                       " if f.encode() + bytes(1) in o))")
        assert probe.returncode == 0, probe.stderr
        assert probe.stdout.split() == [machine, *fields.split()]
