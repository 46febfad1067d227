"""Issue 9: the BPF object defines the record; tcpaccept decodes it by field name.

Real accepts traced through edited builds of the object: a header whose same-size fields
were swapped still prints the right values; a renamed or resized field stops the load with
one line naming it (never wrong data); the filter maps' capacity is the object's."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tcpaccept.event import OBJECT_ENV, PACKAGED_OBJECT, RecordLayout
from tests.support.bpf_variants import build_variant, replace, swap_members
from tests.support.servers import connect, start_server
from tests.support.tracer import start_tracer, tcpaccept_command

pytestmark = pytest.mark.host_only  # builds edited BPF objects with clang (the guests have none)

SWAPS = (("lport", "rport"), ("laddr", "raddr"), ("uid", "netns"), ("fd", "listen_fd"))


@pytest.fixture(scope="module")
def swapped_object(tmp_path_factory: pytest.TempPathFactory) -> Path:
    def swap_all(text: str) -> str:
        for a, b in SWAPS:
            text = swap_members(a, b)(text)
        return text

    obj = build_variant(tmp_path_factory.mktemp("swapped"), {"tcpaccept.h": swap_all})
    # Positive control: every swapped field really sits where its partner was.
    original, swapped = RecordLayout.from_object(PACKAGED_OBJECT), RecordLayout.from_object(obj)
    for a, b in SWAPS:
        assert swapped.field(a).offset == original.field(b).offset != original.field(a).offset
    return obj


def test_swapped_fields_still_print_the_right_values(
        swapped_object: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OBJECT_ENV, str(swapped_object))
    with start_server("127.0.0.1") as server:
        run = start_tracer()
        # From 127.0.0.2, so that the local and remote addresses differ too.
        clients = [connect("127.0.0.1", server.port, source="127.0.0.2") for _ in range(3)]
        accepted = server.accept(3)
        run.stop()
        events = run.events([server.pid])
        assert len(events) == 3, run.stderr
        by_port = {e["rport"]: e for e in events}
        for client, (peer_addr, peer_port, new_fd) in zip(clients, accepted):
            e = by_port[client.getsockname()[1]]
            assert (e["raddr"], e["rport"]) == (peer_addr, peer_port)
            assert peer_addr == "127.0.0.2"
            assert (e["laddr"], e["lport"]) == ("127.0.0.1", server.port)
            assert e["uid"] == os.geteuid()
            assert e["netns"] == os.stat("/proc/self/ns/net").st_ino
            if e["fd"] is not None:  # fexit/kprobe cannot know descriptors
                assert (e["fd"], e["listen_fd"]) == (new_fd, server.listen_fd)
        for c in clients:
            c.close()


BROKEN = {
    "renamed": ({"tcpaccept.h": replace("__u16 lport;", "__u16 local_port;"),
                 "accept.bpf.h": replace("e->lport", "e->local_port")}, "'lport'"),
    "resized": ({"tcpaccept.h": replace("__u16 lport;", "__u32 lport;")}, "'lport'"),
}


@pytest.mark.parametrize("variant", BROKEN)
def test_a_renamed_or_resized_field_fails_the_load_with_one_line(
        variant: str, tmp_path: Path) -> None:
    edits, named = BROKEN[variant]
    obj = build_variant(tmp_path, edits)
    result = subprocess.run(tcpaccept_command("--json"), capture_output=True, text=True,
                            timeout=60, env={**os.environ, OBJECT_ENV: str(obj)})
    assert result.returncode == 1, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0] and "Traceback" not in result.stderr, lines
    assert result.stdout == ""


def test_filter_list_limits_come_from_the_object(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    too_many = ",".join(map(str, range(1, 1100)))
    result = subprocess.run(tcpaccept_command("-P", too_many), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert result.stderr == "tcpaccept: -P/--port: 1099 ports given, at most 1024\n"
    small = build_variant(tmp_path, {"maps.bpf.h": replace(
        "__uint(max_entries, 1024);\n\t__type(key, __u16);",
        "__uint(max_entries, 4);\n\t__type(key, __u16);")})
    monkeypatch.setenv(OBJECT_ENV, str(small))
    result = subprocess.run(tcpaccept_command("-P", "1,2,3,4,5"), capture_output=True,
                            text=True, timeout=60)
    assert (result.returncode, result.stderr) == (
        2, "tcpaccept: -P/--port: 5 ports given, at most 4\n")
    # Positive control: as many as the object's map holds is fine.
    start_tracer("-P", "1,2,3,4").stop()

