"""One JSON object per accept (JSON Lines)."""

from __future__ import annotations

import json
import time
from typing import Callable, Optional

from ..model import Accept, Container, Drop
from .clock import SecondCache, iso_prefix

_ACCEPT_LINE = (
    '{"event": "accept", "time": "%s.%06d%s", "pid": %d, "tid": %d, "comm": %s, '
    '"family": %d, "raddr": "%s", "rport": %d, "laddr": "%s", "lport": %d, "backlog": %d, '
    '"backlog_max": %d, "fd": %s, "listen_fd": %s, "uid": %d, "netns": %d, "cgroup_id": %d, '
    '"queue_latency_us": %s%s%s}')
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
        # inlined here (the time as in time(), without its calls and tuples); one
        # %-format, ~15% cheaper than the same f-string. fexit and kprobe see the socket,
        # not the descriptor: fd is null there, not a fake -1.
        second = e.time_ns // 1_000_000_000
        if second != self._second:
            self._second = second
            self._stamp, self._offset = iso_prefix(second)
        qlat = e.queue_latency_ns
        return _ACCEPT_LINE % (
            self._stamp, e.time_ns % 1_000_000_000 // 1000, self._offset, e.pid, e.tid,
            self._comm_json.get(e.comm) or self._quoted_comm(e.comm), e.family, e.raddr,
            e.rport, e.laddr, e.lport, e.backlog, e.backlog_max,
            e.fd if e.fd >= 0 else "null", e.listen_fd if e.listen_fd >= 0 else "null",
            e.uid, e.netns, e.cgroup_id, "null" if qlat is None else "%.3f" % (qlat / 1000),
            self._container_json.get(e.container) or self._container_keys(e.container),
            "" if self.cgroup_path is None
            else f', "cgroup": {json.dumps(self.cgroup_path(e.cgroup_id))}')

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

