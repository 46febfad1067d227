"""Privilege checks and their messages without a kernel (the real runs as uid 65534 are in
tests/kernel/test_privileges.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tcpaccept import preflight, privileges, probes
from tcpaccept.errors import TcpacceptError

MOUNTINFO = """\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
23 22 0:7 / /sys rw,nosuid shared:2 - sysfs sysfs rw
47 23 0:13 / /sys/kernel/tracing rw,relatime shared:20 - tracefs nodev rw
48 23 0:14 / /sys/kernel/debug rw,relatime shared:21 - debugfs debugfs rw
"""


def test_tracefs_is_found_in_the_mount_table(tmp_path: Path) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    assert preflight.tracefs_mounted(str(mountinfo)) == "/sys/kernel/tracing"
    mountinfo.write_text(MOUNTINFO.replace("- tracefs", "- sysfs"))
    assert preflight.tracefs_mounted(str(mountinfo)) is None
    # Optional fields before the separator vary in number: the type is right after "-".
    mountinfo.write_text("47 23 0:13 / /sys/kernel/debug/tracing rw - tracefs nodev rw\n")
    assert preflight.tracefs_mounted(str(mountinfo)) == "/sys/kernel/debug/tracing"


def test_an_unmounted_tracefs_is_mounted_only_with_sys_admin(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "tracefs_mounted", lambda: None)
    monkeypatch.setattr(preflight, "TRACEFS_PATHS", ("/nonexistent/tracing",))
    monkeypatch.setattr(preflight, "effective_caps", lambda: 1 << preflight.CAP_BPF)
    with pytest.raises(TcpacceptError) as err:
        preflight.ensure_tracefs()
    assert "not mounted, and mounting it needs CAP_SYS_ADMIN" in str(err.value)
    assert preflight.tracefs_ids_unreadable() == str(err.value)  # a reason, not an error


@pytest.mark.parametrize("caps, missing", [
    (1 << preflight.CAP_PERFMON, "missing: CAP_BPF ("),
    (1 << preflight.CAP_BPF, "missing: CAP_PERFMON ("),
    (0, "missing: CAP_BPF and CAP_PERFMON ("),
])
def test_the_missing_capability_is_named(monkeypatch: pytest.MonkeyPatch, caps: int,
                                         missing: str) -> None:
    monkeypatch.setattr(preflight, "effective_caps", lambda: caps)
    with pytest.raises(TcpacceptError) as err:
        preflight.check_privileges()
    assert missing in str(err.value) and err.value.exit_code == 77
    assert "\n" not in str(err.value)


def test_uid_0_without_capabilities_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root in a container with every capability dropped cannot load BPF either."""
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 0)
    monkeypatch.setattr(preflight, "effective_caps", lambda: 0)
    with pytest.raises(TcpacceptError):
        preflight.check_privileges()
    monkeypatch.setattr(preflight, "effective_caps", lambda: 1 << preflight.CAP_SYS_ADMIN)
    preflight.check_privileges()  # CAP_SYS_ADMIN implies both


def test_forcing_sys_exit_is_a_reason_for_the_plan(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(probes.TRACEPOINT_ATTACH_ENV, "sys_exit")
    assert probes.syscall_tracepoints_unattachable() == f"{probes.TRACEPOINT_ATTACH_ENV}=sys_exit"


def test_drops_warning_names_what_each_part_needs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 65534)
    monkeypatch.setattr(privileges, "effective_caps", lambda: 0)
    warning = privileges.drops_warning()
    assert warning is not None and "\n" not in warning
    assert "owners (PID, COMM) need CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH" in warning
    assert "other network namespaces need CAP_SYS_PTRACE and CAP_SYS_ADMIN" in warning
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 0)  # root owns /proc/PID/fd
    monkeypatch.setattr(privileges, "effective_caps", lambda: 1 << privileges.CAP_SYS_PTRACE)
    assert privileges.drops_warning() == (
        "listener drops (--drops, -s): listeners in other network namespaces need "
        "CAP_SYS_PTRACE and CAP_SYS_ADMIN: only this one is watched")
    every = 1 << privileges.CAP_SYS_PTRACE | 1 << privileges.CAP_SYS_ADMIN
    monkeypatch.setattr(privileges, "effective_caps", lambda: every)
    assert privileges.drops_warning() is None


def test_container_names_warning_lists_only_present_unreadable_dirs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(privileges.os, "geteuid", lambda: 65534)
    monkeypatch.setattr(privileges, "effective_caps", lambda: 0)
    assert privileges.container_names_warning(str(tmp_path)) is None  # no runtime here
    locked = tmp_path / "run/containers/storage"
    locked.mkdir(parents=True)
    monkeypatch.setattr(privileges, "_unreadable", lambda path: path == str(locked))
    warning = privileges.container_names_warning(str(tmp_path))
    assert warning is not None and str(locked) in warning and "CAP_DAC_READ_SEARCH" in warning
    monkeypatch.setattr(privileges, "effective_caps",
                        lambda: 1 << privileges.CAP_DAC_READ_SEARCH)
    assert privileges.container_names_warning(str(tmp_path)) is None
