"""Thousands of listeners that each accepted once: a child in a network namespace of the
test's own opens N listening sockets on 127.0.0.1, and on "go" (the tracer is attached)
connects to each and accepts that one connection, so the kernel's listener table holds N
entries of one process in one namespace, whatever else runs on the machine."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import textwrap

from tests.support.netns import NetNamespace

LISTENERS = textwrap.dedent("""
    import ctypes, resource, socket, sys
    n = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1024, n + 1024))
    ctypes.CDLL(None).prctl(15, b"manylisten", 0, 0, 0)
    listeners = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        listeners.append(s)
    print("listening", flush=True)
    sys.stdin.readline()  # "go": the tracer is attached
    for s in listeners:
        client = socket.create_connection(s.getsockname())
        accepted, _ = s.accept()
        accepted.close()
        client.close()
    print("done", flush=True)
    sys.stdin.readline()  # keep the listeners until the test is over
""")


class ManyListeners:
    def __init__(self, ns: NetNamespace, count: int) -> None:
        self.count = count
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns.name, sys.executable, "-c",
                                      LISTENERS, str(count)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if line.strip() != "listening":
            self.close()
            raise AssertionError(f"the listeners child did not start: {line!r}")

    def accept_once_each(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line.strip() == "done", f"the listeners child ended early: {line!r}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        self.proc.wait(10)
