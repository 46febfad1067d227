"""The seed tool and ours on the same traffic, inside stock kernels: identical rows.

Debian's bpftrace ships tcpaccept.bt (kretprobe on inet_csk_accept). Both tools run at
once in the guest while a Python server accepts IPv4, IPv6 and dual-stack connections;
PID, COMM, RADDR, RPORT, LADDR and LPORT must match row for row. BL differs by design:
the seed reads the child socket, we read the listener (README, "BL differs").
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from guest import run_script

SCRIPT = r"""
set -u
bpftrace /usr/sbin/tcpaccept.bt >/tmp/bt.out 2>/tmp/bt.err &
bt=$!
.venv/bin/tcpaccept --probe {method} >/tmp/ours.out 2>/tmp/ours.err &
ours=$!
wait_for_line /tmp/bt.out '^TIME' 120 || {{ cat /tmp/bt.err; exit 3; }}
wait_for_line /tmp/ours.out '^TIME' 120 || {{ cat /tmp/ours.err; exit 4; }}
python3 - <<'EOF'
import socket, time
def serve(family, host, clients, v6only=True):
    s = socket.socket(family)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    s.bind((host, 0)); s.listen(8)
    port = s.getsockname()[1]
    conns = [socket.create_connection((c, port)) for c in clients]
    time.sleep(0.2)
    for _ in clients:
        s.accept()
serve(socket.AF_INET, "127.0.0.1", ["127.0.0.1"] * 3)
serve(socket.AF_INET6, "::1", ["::1"] * 2)
serve(socket.AF_INET6, "::", ["127.0.0.1", "::1"], v6only=False)
time.sleep(1)
EOF
stop_with_sigint $bt 120
stop_with_sigint $ours 60
cp /tmp/bt.out /vmio/bt.out
cp /tmp/ours.out /vmio/ours.out
echo "bt rc and ours rc done"
"""

ROW = re.compile(r"^\d\d:\d\d:\d\d\s")


def rows(text: str) -> list[tuple[str, ...]]:
    """(PID, COMM, RADDR, RPORT, LADDR, LPORT, BL) of each accept row of a seed-layout table."""
    return [tuple(line.split()[1:8]) for line in text.splitlines() if ROW.match(line)]


def unmapped(address: str) -> str:
    return address.removeprefix("::ffff:") if "." in address else address


@pytest.mark.parametrize("method", ["fexit", "kprobe"])
@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_same_rows_as_tcpaccept_bt(vm_cache: Path, repo_root: Path, tmp_path: Path,
                                   kernel: str, method: str) -> None:
    result = run_script(kernel, SCRIPT.format(method=method), repo_root, timeout=600,
                        cache=vm_cache, share_dir=tmp_path)
    assert result.returncode == 0, result.output[-4000:]
    seed = rows((tmp_path / "bt.out").read_text())
    ours = rows((tmp_path / "ours.out").read_text())
    print(f"--- {kernel} {method}: tcpaccept.bt\n{(tmp_path / 'bt.out').read_text()}")
    print(f"--- {kernel} {method}: tcpaccept\n{(tmp_path / 'ours.out').read_text()}")
    assert len(ours) == 7, ours
    # The seed prints IPv4 clients of the dual-stack listener as ::ffff:a.b.c.d; we unmap.
    seed_cols = sorted((pid, comm, unmapped(ra), rp, unmapped(la), lp)
                       for pid, comm, ra, rp, la, lp, _bl in seed)
    our_cols = sorted(row[:6] for row in ours)
    assert our_cols == seed_cols
