"""How the tracepoint method decides about io_uring accepts (no BPF loaded here)."""

from __future__ import annotations

from unittest import mock

from tcpaccept import iouring


def test_kernel_version_reads_distribution_releases() -> None:
    assert iouring.kernel_version("6.12.117+deb13-amd64") == (6, 12)
    assert iouring.kernel_version("5.10.0-32-amd64") == (5, 10)
    assert iouring.kernel_version("6.18.44-fc-v595") == (6, 18)
    assert iouring.kernel_version("garbage") == (0, 0)


def test_no_io_uring_loads_nothing_and_says_why() -> None:
    support = iouring.support(wanted=False)
    assert support.programs == ()
    assert support.check_line() == "io_uring accepts: no (turned off with --no-io-uring)"


def test_kernels_before_6_2_are_declined_without_reading_btf() -> None:
    with mock.patch.object(iouring, "kernel_version", return_value=(6, 1)), \
         mock.patch.object(iouring, "kernel_tracepoints") as tracepoints:
        support = iouring.support()
    tracepoints.assert_not_called()
    assert support.programs == ()
    assert support.check_line().startswith("io_uring accepts: no (kernel 6.1 < 6.2")


def test_program_follows_the_io_uring_complete_signature() -> None:
    cases = {
        (4, 2, 3): (iouring.COMPLETE, iouring.SUBMIT, iouring.TASK_ADD, iouring.OVERFLOW),
        (8, 2, 3): (iouring.COMPLETE_PRE_6_13, iouring.SUBMIT, iouring.TASK_ADD,
                    iouring.OVERFLOW),  # 6.3-6.12
        (8, 2, None): (iouring.COMPLETE_PRE_6_13, iouring.SUBMIT, iouring.OVERFLOW),
        (8, None, 3): (iouring.COMPLETE_PRE_6_13,),  # 6.2: no io_uring_submit_req
        (None, None, None): (),  # no io_uring tracepoints at all
        (5, 2, 3): (),  # a signature nobody wrote a program for
    }
    for tracepoints, programs in cases.items():
        with mock.patch.object(iouring, "kernel_version", return_value=(6, 13)), \
             mock.patch.object(iouring, "kernel_tracepoints", return_value=tracepoints):
            support = iouring.support()
        assert support.programs == programs, tracepoints
        assert support.available == bool(programs)


def test_check_says_when_accepts_armed_before_the_start_are_not_seen() -> None:
    """Without io_uring_task_add(req, mask), a multishot accept armed before the tracer
    started is never found: --check says so; with it, nothing needs saying."""
    lines = {}
    for task_add in (None, 3):
        with mock.patch.object(iouring, "kernel_version", return_value=(6, 13)), \
             mock.patch.object(iouring, "kernel_tracepoints", return_value=(4, 2, task_add)):
            lines[task_add] = iouring.support().check_line()
    assert lines == {
        None: "io_uring accepts: yes (tracepoint method, io_uring_complete; multishot accepts "
              "armed before the start are not seen: no io_uring_task_add(req, mask))",
        3: "io_uring accepts: yes (tracepoint method, io_uring_complete)"}
