"""The server under load: our own nginx in a temp dir (never the system's)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Optional

from bench.common import BenchError, which
from tests.support.child import free_port

STATUS_PATH = "/status"
NGINX_CONF = """\
worker_processes 1;
daemon off;
master_process on;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = {status} {{ stub_status; }}
        location / {{ return 204; }}
    }}
}}
"""


class Nginx:
    """One worker, 204 for every request, stub_status on the same port (one accept queue)."""

    def __init__(self, workdir: Path) -> None:
        self.dir = workdir / "nginx"
        self.dir.mkdir()
        self.port = free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.pids: set[int] = set()

    def start(self) -> None:
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.dir, port=self.port, status=STATUS_PATH))
        with open(self.dir / "stderr", "wb") as stderr:
            self.proc = subprocess.Popen(
                [which("nginx"), "-p", str(self.dir), "-c", str(conf), "-e",
                 str(self.dir / "error.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"nginx exited: {self._errors()}")
            try:
                self._stub_accepts(timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise BenchError(f"nginx does not answer: {self._errors()}") from None
                time.sleep(0.05)
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        self.pids = {self.proc.pid, *map(int, children.split())}

    def _errors(self) -> str:
        text = ""
        for name in ("stderr", "error.log"):
            path = self.dir / name
            if path.exists():
                text += path.read_text(errors="replace")
        return text.strip()[-500:] or "(no message)"

    def accepts(self, attempts: int = 3) -> int:
        """stub_status 'accepts' (this request's own connection included). A request that
        timed out is retried: if nginx accepted it, it was traced too, so both counts
        include it and still agree."""
        for attempt in range(1, attempts + 1):
            try:
                return self._stub_accepts(timeout=10)
            except OSError as exc:
                if attempt == attempts:
                    raise BenchError(f"nginx stub_status does not answer: {exc}") from None
        raise AssertionError("unreachable")

    def _stub_accepts(self, timeout: float) -> int:
        url = f"http://127.0.0.1:{self.port}{STATUS_PATH}"
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            body = reply.read().decode()
        # Active connections: 1 \n server accepts handled requests\n 12 12 12 \n ...
        return int(body.splitlines()[2].split()[0])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGQUIT)  # graceful: master stops its worker
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.pids - {self.proc.pid}:  # a worker outliving its master
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
