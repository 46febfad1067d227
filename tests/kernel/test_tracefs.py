"""tracefs may be unmounted after boot: tcpaccept mounts it itself when it needs it."""

from __future__ import annotations

from tests.support.servers import connect, start_server
from tests.support.tracer import BANNER, attach_method, start_tracer

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
    with start_server() as server, \
            start_tracer("-n", "1", "-p", str(server.pid), probe=method,
                         wrapper=["unshare", "-m", "--propagation", "private", "sh", "-c",
                                  SCRIPT, "sh"]) as tracer:
        client = connect("127.0.0.1", server.port)
        server.accept(1)
        tracer.proc.wait(30)
        client.close()
    assert tracer.returncode == 0, tracer.stderr
    assert tracer.stderr.splitlines()[0] == BANNER  # mounted quietly
    assert [e["pid"] for e in tracer.events()] == [server.pid]
