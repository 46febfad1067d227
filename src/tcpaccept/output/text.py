"""The seed's text layout (tcpaccept.bt), plus the optional columns of --extended/--latency."""

from __future__ import annotations

import time
from typing import Callable, Optional

from ..model import Accept, Container, Drop
from .clock import SecondCache, hms
from .escape import escape_text, escaped_lookup

SEED_ROW = "{:<8} {:<6} {:<14} {:<39} {:<5} {:<39} {:<5} {}"
# The same row for an accept, as %-formatting: about twice as fast as str.format here, and
# this runs once per event (SEED_ROW stays for the header and drop rows).
_ACCEPT_ROW = "%-8s %-6d %-14s %-39s %-5d %-39s %-5d %d/%d"
_NS = 1_000_000_000


class TextFormatter:
    """Rows as `%-8s %-6d %-14s %-39s %-5d %-39s %-5d %d/%d`, like tcpaccept.bt.

    relative_to_ns: when set (bcc's -t), TIME(s) is seconds since that moment instead of
    the local HH:MM:SS; with both_times (bcc's -T -t) TIME comes first, then TIME(s).
    extended adds UID NETNS FD CONTAINER CGROUP; latency adds QLAT(ms). CONTAINER is the
    container's name, else its 12-character id, else `-`.
    """

    def __init__(
        self,
        relative_to_ns: Optional[int] = None,
        extended: bool = False,
        latency: bool = False,
        cgroup_path: Optional[Callable[[int], str]] = None,
        both_times: bool = False,
    ) -> None:
        self.relative_to_ns = relative_to_ns
        self._clock_prefix = both_times and relative_to_ns is not None
        self.extended = extended
        self.latency = latency
        self.cgroup_path = cgroup_path or str
        self._clock = SecondCache(hms)
        self._has_extra = extended or latency
        # The seed's columns only, local HH:MM:SS: what `tcpaccept` with no flags prints.
        self._plain = not self._has_extra and relative_to_ns is None
        self._second = -1  # the second self._hms shows (the plain row's inlined clock)
        self._hms = ""

    def header(self) -> str:
        time_title = "TIME(s)" if self.relative_to_ns is not None else "TIME"
        head = SEED_ROW.format(time_title, "PID", "COMM", "RADDR", "RPORT", "LADDR", "LPORT",
                               "BL" if not self._has_extra else f"{'BL':<11}")
        if self._clock_prefix:
            head = f"{'TIME':<8} {head}"
        return head + self._extra_titles()

    def _extra_titles(self) -> str:
        extra = ""
        if self.latency:
            extra += f" {'QLAT(ms)':>10}"
        if self.extended:
            extra += f" {'UID':<6} {'NETNS':<11} {'FD':<5} {'CONTAINER':<20} CGROUP"
        return extra

    def _time(self, time_ns: int) -> str:
        if self.relative_to_ns is None:
            return self._clock(time_ns // _NS)
        return f"{(time_ns - self.relative_to_ns) / _NS:.3f}"

    def line(self, e: Accept) -> str:
        if self._plain:
            # The common case inlined: the time text changes once a second, comm comes
            # from the escape cache (`or` falls through on a miss, and for an empty comm).
            second = e.time_ns // _NS
            if second != self._second:
                self._second = second
                self._hms = hms(second)
            return _ACCEPT_ROW % (self._hms, e.pid, escaped_lookup(e.comm) or escape_text(e.comm),
                                  e.raddr, e.rport, e.laddr, e.lport, e.backlog, e.backlog_max)
        backlog = f"{e.backlog}/{e.backlog_max}"
        # comm and the cgroup path are chosen by the traced system: escaped, never raw.
        row = SEED_ROW.format(self._time(e.time_ns), e.pid, escape_text(e.comm), e.raddr,
                              e.rport, e.laddr, e.lport,
                              backlog if not self._has_extra else f"{backlog:<11}")
        if self._clock_prefix:
            row = f"{self._clock(e.time_ns // _NS):<8} {row}"
        if not self._has_extra:
            return row
        if self.latency:
            qlat = e.queue_latency_ns
            row += f" {qlat / 1e6:>10.3f}" if qlat is not None else f" {'-':>10}"
        if self.extended:
            fd = e.fd if e.fd >= 0 else "-"
            cgroup = escape_text(self.cgroup_path(e.cgroup_id))
            row += f" {e.uid:<6} {e.netns:<11} {fd:<5} {_container(e.container):<20} {cgroup}"
        return row

    def drop_line(self, report: Drop) -> str:
        """A listener overflow, in the accept columns: RADDR says DROP, BL is the queue."""
        return SEED_ROW.format(
            self._time(report.time_ns or time.time_ns()),
            report.pid if report.pid is not None else "-", escape_text(report.comm or "?"),
            "DROP", "-", report.laddr, report.lport,
            f"{report.backlog}/{report.backlog_max} dropped={report.dropped}"
            + (f" netns={report.netns}" if self.extended and report.netns else "")
            + (f" container={_container(report.container)}" if report.container else ""),
        )


def _container(container: Optional[Container]) -> str:
    """Runtime-chosen names are untrusted too: escaped like comm."""
    return escape_text(container.short) if container is not None else "-"
