"""Real containers for tests: podman, docker and containerd, with images made here.

No registry: an image is a directory holding /bin/busybox and its applet links, imported
into podman (``podman import``) or loaded as a docker-archive tar written here (docker
``load``, ``ctr images import``). Facts measured on this machine (hybrid cgroups, root
without CAP_SYS_RESOURCE): podman needs ``--runtime runc`` (crun fails on the hybrid
layout) and explicit ulimits; each container gets its own network namespace (``--network
none``: only ``lo``) and traffic goes in with ``nsenter -t <pid> -n``.

Every helper is a context manager that removes what it made (containers, daemons, their
directories, the cgroups the runtimes left behind), also when the test fails. A runtime
that cannot start raises with its log: the test fails, it does not skip.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

BUSYBOX = "/usr/bin/busybox"  # Debian busybox-static
APPLETS = ("sh", "httpd", "sleep", "nc", "cat", "ls", "wget", "true")
HTTPD = ("/bin/busybox", "httpd", "-f", "-p", "8080", "-h", "/")  # a ready listener
PODMAN_IMAGE = "localhost/tcpaccept-busybox:latest"
PODMAN_RUN_FLAGS = ("--runtime", "runc", "--ulimit", "nofile=1024:1024",
                    "--ulimit", "nproc=4096:4096", "--network", "none")


def _run(argv: Sequence[str], timeout: float = 60, **kwargs: object) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                          **kwargs)  # type: ignore[call-overload]
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): "
                           f"{done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _log_tail(path: str, lines: int = 15) -> str:
    if not path or not os.path.exists(path):
        return ""
    with open(path, errors="replace") as file:
        return "".join(file.readlines()[-lines:])


def _wait(what: str, ready: Callable[[], bool], timeout: float, log: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout} s\n{_log_tail(log)}")
        time.sleep(0.1)


# -- cgroups ---------------------------------------------------------------------------
def cgroup_mounts() -> list[str]:
    """Mount points of every cgroup hierarchy (v2 and, on a hybrid host, the v1 ones)."""
    with open("/proc/self/mountinfo") as mounts:
        found = []
        for line in mounts:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2"):
                found.append(fields[4])
    return found


def cgroup2_mount() -> str:
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields = line.split()
            if fields[fields.index("-") + 1] == "cgroup2":
                return fields[4]
    raise RuntimeError("no cgroup2 mount on this host")


def cgroup_v2_path(pid: int) -> str:
    """The process's cgroup2 path (the ``0::`` line of /proc/PID/cgroup)."""
    with open(f"/proc/{pid}/cgroup") as lines:
        for line in lines:
            if line.startswith("0::"):
                return line[3:].strip()
    raise RuntimeError(f"pid {pid} has no cgroup2 line")


def cgroup_id(relative_path: str) -> int:
    """What bpf_get_current_cgroup_id() returns for a process in this cgroup: the
    inode number of its cgroup2 directory."""
    return os.stat(os.path.join(cgroup2_mount(), relative_path.lstrip("/"))).st_ino


class CgroupLeftovers:
    """Removes, in every hierarchy, the empty cgroups a runtime left under a top-level
    directory that did not exist before (runtimes remove a container's cgroup, not the
    parents they created, such as /docker)."""

    def __init__(self, top: str) -> None:
        self.top = top.strip("/")
        self.absent = [m for m in cgroup_mounts()
                       if not os.path.exists(os.path.join(m, self.top))]

    def remove(self) -> None:
        for mount in self.absent:
            top = os.path.join(mount, self.top)
            for directory, _dirs, _files in sorted(os.walk(top), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):  # in use: another test's, left alone
                    os.rmdir(directory)


class HandMadeCgroup:
    """A real cgroup2 cgroup made with mkdir under a runtime's naming, with a real process
    (busybox sleep) moved in: the cgroup layout of a runtime that does not run here."""

    def __init__(self, relative_path: str) -> None:
        self.path = "/" + relative_path.strip("/")
        self.directory = os.path.join(cgroup2_mount(), self.path.lstrip("/"))
        self.created: list[str] = []
        self.process: Optional[subprocess.Popen[bytes]] = None

    def __enter__(self) -> HandMadeCgroup:
        try:
            parts = self.path.strip("/").split("/")
            for depth in range(1, len(parts) + 1):
                directory = os.path.join(cgroup2_mount(), *parts[:depth])
                if not os.path.exists(directory):
                    os.mkdir(directory)
                    self.created.append(directory)
            self.process = subprocess.Popen([BUSYBOX, "sleep", "600"])
            with open(os.path.join(self.directory, "cgroup.procs"), "w") as procs:
                procs.write(str(self.process.pid))
        except BaseException:
            self.__exit__()
            raise
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def cgroup_id(self) -> int:
        return os.stat(self.directory).st_ino

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
        for directory in reversed(self.created):
            rmdir_when_empty(directory)


def rmdir_when_empty(directory: str, timeout: float = 5) -> None:
    # a killed process leaves its cgroup a moment after wait() returns
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.rmdir(directory)
            return
        except FileNotFoundError:
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- images ----------------------------------------------------------------------------
def busybox_rootfs(directory: str) -> None:
    os.makedirs(os.path.join(directory, "bin"), exist_ok=True)
    shutil.copy2(BUSYBOX, os.path.join(directory, "bin", "busybox"))
    for applet in APPLETS:
        link = os.path.join(directory, "bin", applet)
        if not os.path.lexists(link):
            os.symlink("busybox", link)


def docker_archive(path: str, reference: str) -> None:
    """A one-layer image in `docker save` format (loadable by docker and containerd)."""
    with tempfile.TemporaryDirectory() as rootfs:
        busybox_rootfs(rootfs)
        layer_bytes = io.BytesIO()
        with tarfile.open(fileobj=layer_bytes, mode="w") as layer:
            layer.add(rootfs, arcname=".")
    layer_data = layer_bytes.getvalue()
    diff_id = "sha256:" + hashlib.sha256(layer_data).hexdigest()
    config = json.dumps({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [reference],
                            "Layers": ["layer/layer.tar"]}]).encode()
    with tarfile.open(path, "w") as archive:
        for name, data in ((config_name, config), ("layer/layer.tar", layer_data),
                           ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


# -- running containers ----------------------------------------------------------------
@dataclass(frozen=True)
class RunningContainer:
    id: str
    name: str
    pid: int  # the container's first process, as the host sees it

    @property
    def cgroup_path(self) -> str:
        return cgroup_v2_path(self.pid)

    @property
    def cgroup_id(self) -> int:
        return cgroup_id(self.cgroup_path)


def in_netns(pid: int, argv: Sequence[str], timeout: float = 30) -> str:
    """Run a host command in the network namespace of a container's process."""
    return _run(["nsenter", "-t", str(pid), "-n", *argv], timeout=timeout)


def connect_in_netns(pid: int, port: int = 8080, host: str = "127.0.0.1",
                     count: int = 1) -> None:
    """Open and close `count` TCP connections to host:port inside the process's netns."""
    code = ("import socket, sys\n"
            "for _ in range(int(sys.argv[3])):\n"
            "    socket.create_connection((sys.argv[1], int(sys.argv[2])), 5).close()\n")
    in_netns(pid, ["python3", "-c", code, host, str(port), str(count)])


def unique_name(prefix: str = "tcpa") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Podman:
    """Podman containers from a locally made busybox image; removes them on exit."""

    def __init__(self) -> None:
        if shutil.which("podman") is None:
            raise RuntimeError("podman is not installed (scripts/setup.sh --test installs it)")
        self.started: list[str] = []

    def __enter__(self) -> Podman:
        exists = subprocess.run(["podman", "image", "exists", PODMAN_IMAGE])
        if exists.returncode != 0:
            with tempfile.TemporaryDirectory() as rootfs:
                busybox_rootfs(rootfs)
                tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
                _run(["podman", "import", "-", PODMAN_IMAGE], stdin=tar.stdout)
                tar.wait()
        return self

    def run(self, name: str, command: Sequence[str] = HTTPD) -> RunningContainer:
        self.started.append(name)
        container_id = _run(["podman", "run", "-d", "--name", name, *PODMAN_RUN_FLAGS,
                             PODMAN_IMAGE, *command]).strip()
        pid = int(_run(["podman", "inspect", "-f", "{{.State.Pid}}", name]).strip())
        return RunningContainer(container_id, name, pid)

    def remove(self, name: str) -> None:
        _run(["podman", "rm", "-f", "-t", "0", name])
        self.started.remove(name)

    def __exit__(self, *exc: object) -> None:
        if self.started:
            subprocess.run(["podman", "rm", "-f", "-t", "0", *self.started],
                           capture_output=True, timeout=60)


class DockerDaemon:
    """A dockerd of the test's own (Debian docker.io): data root under ``host_root``
    (var/lib/docker, where the resolver looks), exec root and socket in a short temp
    directory (unix socket paths are limited to 108 bytes), no bridge, no iptables.
    Stopped, with its containers, on exit."""

    def __init__(self, host_root: str) -> None:
        if shutil.which("dockerd") is None:
            raise RuntimeError("dockerd is not installed (Debian docker.io)")
        self.host_root = host_root
        self.data_root = os.path.join(host_root, "var/lib/docker")
        self.run_dir = tempfile.mkdtemp(prefix="tcpa-dk-", dir="/tmp")
        self.socket = os.path.join(self.run_dir, "docker.sock")
        self.log = os.path.join(self.run_dir, "dockerd.log")
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.cgroups = CgroupLeftovers("docker")

    def docker(self, *args: str, timeout: float = 60) -> str:
        return _run(["docker", "-H", f"unix://{self.socket}", *args], timeout=timeout)

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"dockerd exited ({self.process.returncode}):\n"
                               + _log_tail(self.log))
        try:
            self.docker("version", timeout=10)
            return True
        except RuntimeError:
            return False

    def __enter__(self) -> DockerDaemon:
        config = os.path.join(self.run_dir, "daemon.json")
        with open(config, "w") as file:
            file.write("{}")  # not /etc/docker/daemon.json
        try:
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen([
                    "dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false",
                    "--data-root", self.data_root, "--exec-root", os.path.join(self.run_dir, "x"),
                    "--pidfile", os.path.join(self.run_dir, "dockerd.pid"),
                    "--config-file", config, "-H", f"unix://{self.socket}"],
                    stdout=log, stderr=subprocess.STDOUT)
            _wait("dockerd", self._ready, 60, self.log)
            with tempfile.TemporaryDirectory() as scratch:
                archive = os.path.join(scratch, "image.tar")
                docker_archive(archive, "localhost/tcpaccept-busybox:latest")
                self.docker("load", "-i", archive)
        except BaseException:
            self.__exit__()
            raise
        return self

    def run(self, name: str, command: Sequence[str] = HTTPD) -> RunningContainer:
        container_id = self.docker("run", "-d", "--name", name, "--network", "none",
                                   "localhost/tcpaccept-busybox:latest", *command).strip()
        pid = int(self.docker("inspect", "-f", "{{.State.Pid}}", name).strip())
        return RunningContainer(container_id, name, pid)

    def remove(self, name: str) -> None:
        self.docker("rm", "-f", name)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            ids = subprocess.run(["docker", "-H", f"unix://{self.socket}", "ps", "-aq"],
                                 capture_output=True, text=True, timeout=30).stdout.split()
            if ids:
                subprocess.run(["docker", "-H", f"unix://{self.socket}", "rm", "-f", *ids],
                               capture_output=True, timeout=60)
            _stop(self.process)
        self.cgroups.remove()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        shutil.rmtree(self.data_root, ignore_errors=True)


class ContainerdDaemon:
    """A containerd of the test's own: its state directory is ``host_root``/run/containerd
    (so task bundles land where the resolver looks), root under host_root/var/lib, socket
    in a short temp directory. Containers run with ``ctr run`` under a cgroup path and OCI
    annotations the test chooses (what containerd's CRI plugin would pass for a pod)."""

    NAMESPACE = "k8s.io"

    def __init__(self, host_root: str, cgroup_top: str,
                 state_dir: str = "run/containerd") -> None:
        if shutil.which("containerd") is None or shutil.which("ctr") is None:
            raise RuntimeError("containerd/ctr are not installed (Debian containerd)")
        self.host_root = host_root
        self.state = os.path.join(host_root, state_dir)  # k3s: run/k3s/containerd, ...
        self.root = os.path.join(host_root, "var/lib/containerd")
        self.run_dir = tempfile.mkdtemp(prefix="tcpa-ctrd-", dir="/tmp")
        self.socket = os.path.join(self.run_dir, "containerd.sock")
        self.log = os.path.join(self.run_dir, "containerd.log")
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.started: list[str] = []
        self.cgroups = CgroupLeftovers(cgroup_top)

    def ctr(self, *args: str, timeout: float = 60) -> str:
        return _run(["ctr", "-a", self.socket, "-n", self.NAMESPACE, *args], timeout=timeout)

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"containerd exited ({self.process.returncode}):\n"
                               + _log_tail(self.log))
        try:
            self.ctr("version", timeout=10)
            return True
        except RuntimeError:
            return False

    def __enter__(self) -> ContainerdDaemon:
        config = os.path.join(self.run_dir, "config.toml")
        with open(config, "w") as file:
            file.write(f'version = 2\nroot = "{self.root}"\nstate = "{self.state}"\n'
                       f'[grpc]\n  address = "{self.socket}"\n'
                       f'[ttrpc]\n  address = "{self.socket}.ttrpc"\n'
                       # the CRI plugin is not used (no kubelet); keep it from touching CNI
                       'disabled_plugins = ["io.containerd.grpc.v1.cri"]\n')
        try:
            with open(self.log, "wb") as log:
                self.process = subprocess.Popen(["containerd", "--config", config],
                                                stdout=log, stderr=subprocess.STDOUT)
            _wait("containerd", self._ready, 30, self.log)
            with tempfile.TemporaryDirectory() as scratch:
                archive = os.path.join(scratch, "image.tar")
                docker_archive(archive, "localhost/tcpaccept-busybox:latest")
                self.ctr("images", "import", archive)
        except BaseException:
            self.__exit__()
            raise
        return self

    def run(self, container_id: str, cgroup_path: str, annotations: dict[str, str],
            command: Sequence[str] = HTTPD) -> RunningContainer:
        flags = [f"--annotation={key}={value}" for key, value in annotations.items()]
        self.started.append(container_id)
        self.ctr("run", "-d", "--runtime", "io.containerd.runc.v2", "--cgroup", cgroup_path,
                 *flags, "localhost/tcpaccept-busybox:latest", container_id, *command)
        pid_file = os.path.join(self.state, "io.containerd.runtime.v2.task", self.NAMESPACE,
                                container_id, "init.pid")
        with open(pid_file) as file:
            pid = int(file.read())
        return RunningContainer(container_id, container_id, pid)

    def remove(self, container_id: str) -> None:
        subprocess.run(["ctr", "-a", self.socket, "-n", self.NAMESPACE, "tasks", "kill",
                        "-s", "KILL", container_id], capture_output=True, timeout=30)
        deadline = time.monotonic() + 10
        while True:  # `tasks rm` refuses a task that has not stopped yet
            done = subprocess.run(["ctr", "-a", self.socket, "-n", self.NAMESPACE, "tasks",
                                   "rm", "-f", container_id], capture_output=True, timeout=30)
            if done.returncode == 0 or b"not found" in done.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        subprocess.run(["ctr", "-a", self.socket, "-n", self.NAMESPACE, "containers", "rm",
                        container_id], capture_output=True, timeout=30)
        if container_id in self.started:
            self.started.remove(container_id)

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            for container_id in list(self.started):
                self.remove(container_id)
            _stop(self.process)
        self.cgroups.remove()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        for directory in (self.state, self.root):
            shutil.rmtree(directory, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes], timeout: float = 20) -> None:
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
