"""The one-line errors for an unusable system, checked without breaking this one."""

from __future__ import annotations

import pytest

from tcpaccept import libbpf, preflight, session
from tcpaccept.errors import TcpacceptError


def test_kernel_version_parsing() -> None:
    assert preflight.kernel_version("6.12.117+deb13-amd64") == (6, 12)
    assert preflight.kernel_version("5.4.0-1-generic") == (5, 4)


def test_too_old_kernel_names_the_minimum(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.platform, "release", lambda: "5.4.0-150-generic")
    with pytest.raises(TcpacceptError) as err:
        preflight.check_kernel()
    assert str(err.value) == ("kernel 5.4.0-150-generic is too old: tcpaccept needs Linux 5.8 "
                              "or newer (BPF ring buffer)")


def test_missing_btf_says_what_is_needed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight, "BTF_PATH", "/nonexistent/vmlinux")
    with pytest.raises(TcpacceptError) as err:
        preflight.check_kernel()
    assert "no BTF" in str(err.value) and "CONFIG_DEBUG_INFO_BTF=y" in str(err.value)


def test_missing_libbpf_names_the_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(libbpf, "_lib", None)
    monkeypatch.setattr(libbpf, "LIBBPF_SONAME", "libbpf-does-not-exist.so.1")
    monkeypatch.setattr(preflight, "check_privileges", lambda: None)
    monkeypatch.setattr(preflight, "check_kernel", lambda: None)
    with pytest.raises(TcpacceptError) as err:
        session._prepare(verbose=False)
    message = str(err.value)
    assert "libbpf-does-not-exist.so.1 not found" in message
    assert "apt-get install libbpf1" in message and "\n" not in message


def test_privileges_need_root_or_bpf_and_perfmon(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(preflight.os, "geteuid", lambda: 1000)
    monkeypatch.setattr(preflight, "effective_caps", lambda: 1 << preflight.CAP_BPF)
    with pytest.raises(TcpacceptError) as err:
        preflight.check_privileges()
    assert err.value.exit_code != 0
    both = 1 << preflight.CAP_BPF | 1 << preflight.CAP_PERFMON
    monkeypatch.setattr(preflight, "effective_caps", lambda: both)
    preflight.check_privileges()  # enough without root


def test_libbpf_errors_use_libbpf_messages_for_its_own_codes() -> None:
    assert libbpf.strerror(-4007) == "Kernel verifier blocks program loading"
    assert libbpf.strerror(-1) == "Operation not permitted"


def test_seccomp_mode_is_read_from_the_status_file(tmp_path) -> None:
    from tcpaccept.preflight import seccomp_mode

    status = tmp_path / "status"
    status.write_text("Name:\ttcpaccept\nSeccomp:\t2\nSeccomp_filters:\t1\n")
    assert seccomp_mode(str(status)) == 2
    status.write_text("Name:\ttcpaccept\n")  # a kernel without CONFIG_SECCOMP
    assert seccomp_mode(str(status)) == 0


def test_no_seccomp_diagnosis_on_an_unknown_machine() -> None:
    from tcpaccept.preflight import seccomp_refusal

    assert seccomp_refusal("vax") is None
