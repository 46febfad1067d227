"""A real server: Debian's nginx with two worker processes."""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from tests.support.child import free_port
from tests.support.tracer import start_tracer

NGINX_CONF = """
worker_processes 2;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=64;
        location / {{ return 204; }}
    }}
}}
"""


def _workers(master: int, expected: int, timeout: float = 10) -> set[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
        if len(children) == expected:
            return {int(pid) for pid in children}
        time.sleep(0.05)
    raise AssertionError(f"nginx did not start {expected} workers")


def test_nginx_workers_accepts_carry_worker_pids_and_comm() -> None:
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    assert os.path.exists(nginx), "nginx is needed: scripts/setup.sh --test installs it"
    port = free_port()
    with tempfile.TemporaryDirectory() as prefix:
        conf = Path(prefix, "nginx.conf")
        conf.write_text(NGINX_CONF.format(prefix=prefix, port=port))
        master = subprocess.Popen([nginx, "-c", str(conf), "-p", prefix],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            workers = _workers(master.pid, 2)
            run = start_tracer()
            client_ports = []
            for _ in range(20):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/", headers={"Connection": "close"})
                client_ports.append(conn.sock.getsockname()[1])
                assert conn.getresponse().status == 204
                conn.close()
            run.stop()
        finally:
            master.terminate()
            master.wait(10)
    events = [e for e in run.events() if e["lport"] == port]
    assert sorted(e["rport"] for e in events) == sorted(client_ports)
    for e in events:
        assert e["pid"] in workers
        assert e["comm"] == "nginx"
        assert (e["laddr"], e["lport"], e["raddr"]) == ("127.0.0.1", port, "127.0.0.1")
        assert e["backlog_max"] == 64
