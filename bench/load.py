"""The load: wrk, every request on a new connection (so every request is one accept())."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass

from bench.common import BenchError, which

WRK_ARGS = ["-t2", "-c50", "-H", "Connection: close"]


@dataclass
class Load:
    rate: float  # requests/s, as wrk reports
    requests: int
    errors: int  # socket errors + non-2xx/3xx
    output: str


def run_wrk(port: int, seconds: int) -> Load:
    cmd = [which("wrk"), *WRK_ARGS, f"-d{seconds}s", f"http://127.0.0.1:{port}/"]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=seconds + 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if proc.returncode != 0 or not rate or not total:
        raise BenchError(f"wrk failed (exit {proc.returncode}): {out.strip()[-400:]}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors += int(non2xx.group(1)) if non2xx else 0
    return Load(float(rate.group(1)), int(total.group(1)), errors, out)
