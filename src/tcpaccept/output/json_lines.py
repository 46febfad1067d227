"""One JSON object per accept (JSON Lines)."""

from __future__ import annotations

import json
import time
from typing import Callable, Optional

from ..model import Accept, Container, Drop
from .clock import SecondCache, iso_prefix

_NO_CONTAINER = ', "container_id": null, "container": null, "pod": null, "namespace": null'


class JsonFormatter:
    """Keys: event, time (ISO 8601, microseconds, local offset), pid, tid, comm, family,
    raddr, rport, laddr, lport, backlog, backlog_max, fd, listen_fd, uid, netns, cgroup_id,
    queue_latency_us (null when not measured), container_id, container, pod, namespace
    (null outside containers / Kubernetes); cgroup (path) when a resolver is given."""

    def __init__(self, cgroup_path: Optional[Callable[[int], str]] = None) -> None:
        self._clock = SecondCache(iso_prefix)
        self._second = -1  # the second _stamp/_offset show, for line()'s inlined clock
        self._stamp = self._offset = ""
        self._comm_json: dict[str, str] = {}
        self._container_json: dict[Optional[Container], str] = {None: _NO_CONTAINER}
        self.cgroup_path = cgroup_path

    def _container_keys(self, container: Optional[Container]) -> str:
        # Names come from the runtimes' state files: escaped by json.dumps, once each.
        keys = self._container_json.get(container)
        if keys is None:
            if len(self._container_json) > 4096:  # churn must not grow it without bound
                self._container_json = {None: _NO_CONTAINER}
            keys = self._container_json[container] = (
                f', "container_id": {json.dumps(container.id)}, '
                f'"container": {json.dumps(container.name)}, '
                f'"pod": {json.dumps(container.pod)}, '
                f'"namespace": {json.dumps(container.namespace)}')
        return keys

    def time(self, time_ns: int) -> str:
        seconds, ns = divmod(time_ns, 1_000_000_000)
        stamp, offset = self._clock(seconds)
        return f"{stamp}.{ns // 1000:06d}{offset}"

    def _quoted_comm(self, comm: str) -> str:
        # comm is chosen by the traced program: escape it properly, once per distinct name.
        quoted = self._comm_json.get(comm)
        if quoted is None:
            quoted = self._comm_json[comm] = json.dumps(comm)
        return quoted

    def line(self, e: Accept) -> str:
        # Once per event: the second's text, comm and container keys come from caches
        # inlined here (the time as in time(), without its calls and tuples). fexit and
        # kprobe see the socket, not the descriptor: fd is null there, not a fake -1.
        second = e.time_ns // 1_000_000_000
        if second != self._second:
            self._second = second
            self._stamp, self._offset = iso_prefix(second)
        qlat = "null" if e.queue_latency_ns is None else f"{e.queue_latency_ns / 1000:.3f}"
        cgroup = ""
        if self.cgroup_path is not None:
            cgroup = f', "cgroup": {json.dumps(self.cgroup_path(e.cgroup_id))}'
        return (
            f'{{"event": "accept", "time": "{self._stamp}.'
            f'{e.time_ns % 1_000_000_000 // 1000:06d}{self._offset}", "pid": {e.pid}, '
            f'"tid": {e.tid}, "comm": {self._comm_json.get(e.comm) or self._quoted_comm(e.comm)}, '
            f'"family": {e.family}, '
            f'"raddr": "{e.raddr}", "rport": {e.rport}, "laddr": "{e.laddr}", '
            f'"lport": {e.lport}, "backlog": {e.backlog}, "backlog_max": {e.backlog_max}, '
            f'"fd": {e.fd if e.fd >= 0 else "null"}, '
            f'"listen_fd": {e.listen_fd if e.listen_fd >= 0 else "null"}, "uid": {e.uid}, '
            f'"netns": {e.netns}, '
            f'"cgroup_id": {e.cgroup_id}, "queue_latency_us": {qlat}'
            f'{self._container_json.get(e.container) or self._container_keys(e.container)}'
            f'{cgroup}}}'
        )

    def drop_line(self, report: Drop) -> str:
        return json.dumps({
            "event": "drop", "time": self.time(report.time_ns or time.time_ns()),
            "laddr": report.laddr, "lport": report.lport, "pid": report.pid, "comm": report.comm,
            "backlog": report.backlog, "backlog_max": report.backlog_max,
            "dropped": report.dropped, "netns": report.netns or None,
            **_container_fields(report.container),
        })


def _container_fields(container: Optional[Container]) -> dict:
    if container is None:
        return {"container_id": None, "container": None, "pod": None, "namespace": None}
    return {"container_id": container.id, "container": container.name, "pod": container.pod,
            "namespace": container.namespace}

