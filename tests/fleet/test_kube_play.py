"""The DaemonSet's pod template, rendered by `kubectl kustomize` (offline), run by `podman
kube play`: it counts the exact accepts of a host server and of a container, and answers
its probe path on the pod's IP, on 127.0.0.1 and on ::1 inside the pod.

The template is run as rendered (the CRI-O runtime component in place of containerd's:
podman's run root is CRI-O's), wrapped in a Pod (podman 4.3 plays no DaemonSet). What
podman 4.3 does not honour, and how the test supplies it:
- hostPID: ignored (the pod gets its own PID namespace): containers.conf `pidns = "host"`
  (CONTAINERS_CONF), checked with `podman inspect` (PidMode host);
- securityContext.seccompProfile: ignored; the same Localhost profile is passed as the
  annotation podman reads (seccomp.security.alpha.kubernetes.io/pod: localhost/<file>),
  with --seccomp-profile-root at the profile's directory (podman 4.3 fails on a
  subdirectory in the annotation); the agent's bpf() works only if it applied;
- priorityClassName (no scheduler), probes (podman turns them into healthchecks run by
  systemd timers, with curl in the image: none here): the test makes the probe's GET itself;
- containerPort without hostPort: podman 4.3 also publishes it on the host's port 9435
  (a kubelet would not); the test talks to the pod's IP as the kubelet's probe does;
- the image name: the test's build, retagged; rlimits: containers.conf (root here lacks
  CAP_SYS_RESOURCE, see test_image.py); podman names its containers in the graph root,
  which no shipped component mounts (conmon's attach sockets): the test adds that mount.
Not exercised without a kubelet: admission (Pod Security "privileged"), the scheduler and
tolerations, rolling updates, the kubelet's probe timing and restarts, the ServiceAccount,
the Service/PodMonitor/PrometheusRule objects, the seccomp profile under containerd/CRI-O.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from tests.fleet.deployment import (
    KUBERNETES,
    accepts_on_port,
    daemonset,
    rendered_for_runtime,
    samples,
    scrape,
)
from tests.fleet.test_image import PODMAN, PODMAN_NAMES, image  # noqa: F401 - the fixture
from tests.support.containers import Podman, connect_in_netns, in_netns, unique_name
from tests.support.servers import connect, start_server

POD = f"tcpaccept-kube-{os.getpid()}"


def pod_manifest(work: Path, image_name: str, runtime: str = "runtime-cri-o") -> Path:
    template = copy.deepcopy(daemonset(rendered_for_runtime(runtime, work / "overlay"))
                             ["spec"]["template"])
    spec = template["spec"]
    (container,) = spec["containers"]
    container["image"] = image_name
    seccomp = spec["securityContext"]["seccompProfile"]
    assert seccomp["type"] == "Localhost"
    name, volume = os.path.basename(seccomp["localhostProfile"]), "podman-names"
    container["volumeMounts"].append({"name": volume, "mountPath": PODMAN_NAMES[1],
                                      "readOnly": True})
    spec["volumes"].append({"name": volume, "hostPath": {"path": PODMAN_NAMES[0],
                                                         "type": "Directory"}})
    annotations = dict(template["metadata"].get("annotations", {}))
    annotations["seccomp.security.alpha.kubernetes.io/pod"] = f"localhost/{name}"
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": POD, "labels": template["metadata"]["labels"],
                        "annotations": annotations}, "spec": spec}
    path = work / "pod.yaml"
    path.write_text(yaml.safe_dump(pod))
    (work / "containers.conf").write_text(
        '[containers]\npidns = "host"\n'
        'default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]\n')
    return path


def kube(work: Path, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    profiles = KUBERNETES / "seccomp"
    return subprocess.run([*PODMAN, "kube", *args, "--seccomp-profile-root", str(profiles),
                           str(work / "pod.yaml")] if args[0] == "play" else
                          [*PODMAN, "kube", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ,
                                                "CONTAINERS_CONF": str(work / "containers.conf")})


def podman(*args: str) -> str:
    return subprocess.run([*PODMAN, *args], capture_output=True, text=True, timeout=60,
                          check=True).stdout.strip()


@pytest.fixture
def pod(image: str, tmp_path: Path) -> Iterator[tuple[str, int]]:  # noqa: F811
    """(pod IP, pid of the agent) once /healthz answers."""
    subprocess.run(["podman", "tag", image, "localhost/tcpaccept:kube-play"], check=True)
    pod_manifest(tmp_path, "localhost/tcpaccept:kube-play")
    started = time.monotonic()
    try:
        play = kube(tmp_path, "play")
        assert play.returncode == 0, play.stdout + play.stderr
        agent = f"{POD}-tcpaccept"
        assert podman("inspect", "--format", "{{.HostConfig.PidMode}}", agent) == "host"
        infra = json.loads(podman("pod", "inspect", POD))["InfraContainerID"]
        networks = json.loads(podman("inspect", "--format", "{{json .NetworkSettings.Networks}}",
                                     infra))
        (address,) = [net["IPAddress"] for net in networks.values()]  # the pod's IP
        deadline = time.monotonic() + 60
        while True:
            state = podman("inspect", "--format", "{{.State.Status}}", agent)
            assert state == "running", f"agent {state}: {podman('logs', agent)}"
            try:
                scrape(f"http://{address}:9435/healthz", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, podman("logs", agent)
                time.sleep(0.2)
        print(f"pod up (kube play to /healthz 200) in {time.monotonic() - started:.1f} s")
        yield address, int(podman("inspect", "--format", "{{.State.Pid}}", agent))
    finally:
        subprocess.run([*PODMAN, "pod", "rm", "-f", "-t", "5", POD], capture_output=True,
                       timeout=120)


def test_pod_template_runs_and_counts_exact_accepts(pod: tuple[str, int]) -> None:
    address, agent_pid = pod
    url = f"http://{address}:9435/metrics"
    # Under a seccomp filter (the Localhost profile: podman's default would refuse bpf()).
    status = Path(f"/proc/{agent_pid}/status").read_text()
    assert "\nSeccomp:\t2\n" in status
    # The probe path, as the kubelet would GET it on the pod's IP, and inside the pod on
    # both address families of its `--metrics [::]:9435`.
    assert scrape(f"http://{address}:9435/healthz") == "ok\n"
    for host in ("127.0.0.1", "[::1]"):
        answer = in_netns(agent_pid, ["python3", "-c", "import urllib.request,sys;"
                                      "print(urllib.request.urlopen(sys.argv[1]).read().decode(),"
                                      " end='')", f"http://{host}:9435/healthz"])
        assert answer == "ok\n", host
    host_accepts, container_accepts = 6, 4
    with start_server(comm="kube-host") as server, Podman() as containers:
        for _ in range(host_accepts):
            client = connect("127.0.0.1", server.port)
            server.accept(1)
            client.close()
        web = containers.run(unique_name("kube-web"))
        netns = str(os.stat(f"/proc/{web.pid}/ns/net").st_ino)
        connect_in_netns(web.pid, 8080, count=container_accepts)

        def counts() -> tuple[float, float]:
            text = scrape(url)
            return accepts_on_port(text, server.port), sum(
                value for labels, value in samples(text, "tcpaccept_accepts_total")
                if labels.get("netns") == netns and labels.get("container") == web.name)

        deadline = time.monotonic() + 15
        while counts() < (host_accepts, container_accepts):
            assert time.monotonic() < deadline, (counts(), scrape(url)[-3000:])
            time.sleep(0.2)
        time.sleep(0.5)  # nothing more may arrive: exactly what each server accepted
        assert counts() == (host_accepts, container_accepts)


def test_missing_runtime_directory_stops_the_pod_and_is_not_created(
        image: str, tmp_path: Path) -> None:  # noqa: F811
    # hostPath type Directory: no containerd runs here, so its task directory is missing.
    missing = "/run/containerd/io.containerd.runtime.v2.task"
    assert not os.path.exists(missing), "a containerd runs here: pick another layout"
    pod_manifest(tmp_path, image, runtime="runtime-containerd")
    try:
        play = kube(tmp_path, "play")
        assert play.returncode != 0
        assert missing in play.stderr, play.stderr
        assert not os.path.exists(missing)
    finally:
        subprocess.run([*PODMAN, "pod", "rm", "-f", "-t", "0", POD], capture_output=True,
                       timeout=120)
