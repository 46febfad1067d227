"""tracefs may be unmounted after boot: tcpaccept mounts it itself when it needs it."""

from __future__ import annotations

import subprocess
import sys
import time

from tests.support.servers import connect, start_server
from tests.support.tracer import attach_method

# In a private mount namespace: unmount every tracefs/debugfs, then trace one accept.
SCRIPT = """
for m in $(awk '$3 == "tracefs" || $3 == "debugfs" {print $2}' /proc/mounts | sort -r); do
  umount "$m" || exit 90
done
grep -qE ' (tracefs|debugfs) ' /proc/mounts && exit 91
exec "$@"
"""


def test_traces_with_tracefs_unmounted() -> None:
    method = attach_method()
    with start_server() as server:
        tracer = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", SCRIPT, "sh",
             sys.executable, "-m", "tcpaccept.cli", "--probe", method, "-n", "1", "-j",
             "-p", str(server.pid)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        assert tracer.stderr is not None
        assert tracer.stderr.readline().strip() == "Tracing TCP accepts. Hit Ctrl-C to end."
        time.sleep(0.2)
        client = connect("127.0.0.1", server.port)
        server.accept(1)
        out, err = tracer.communicate(timeout=30)
        client.close()
    assert tracer.returncode == 0, err
    assert f'"pid": {server.pid}' in out
