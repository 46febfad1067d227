"""ns per accept of the tracepoint method's two accept programs on this kernel.

    .venv/bin/python -m bench.accept_program_cost [--accepts 20000] [--rounds 5] [--mode '--json']

Starts tcpaccept with each accept program in turn (TCPACCEPT_ACCEPT_PROGRAM=probe-read, or
auto: the BTF pointer walk where the kernel offers it), drives N real accepts (a Python
client loop against a loopback listener in this process) and reads run_time_ns / run_cnt of
the tracer's sys_exit_accept4 program (BPF run-time stats on for the run, bpf_stats.py).
Rounds alternate the programs; the median is reported. --mode passes tcpaccept flags:
none is the text mode; '--json' adds the queue-latency lookup."""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import threading

from bench.bpf_stats import RunTimeStats, delta, prog_counters

BANNER = "Tracing TCP accepts. Hit Ctrl-C to end."
PROGRAMS = {"btf-walk": "", "probe-read": "probe-read"}  # name -> TCPACCEPT_ACCEPT_PROGRAM


def drive_accepts(n: int) -> None:
    """n connect/accept/close pairs on loopback. At most 256 wait to be accepted: a full
    accept queue would drop connections and leave the server waiting for them."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1024)
    waiting = threading.Semaphore(256)

    def serve() -> None:
        for _ in range(n):
            listener.accept()[0].close()
            waiting.release()

    server = threading.Thread(target=serve)
    server.start()
    for _ in range(n):
        waiting.acquire()
        socket.create_connection(listener.getsockname()).close()
    server.join()
    listener.close()


def one_round(program: str, accepts: int, mode: list[str]) -> float:
    env = {**os.environ, "TCPACCEPT_ACCEPT_PROGRAM": PROGRAMS[program]}
    proc = subprocess.Popen([sys.executable, "-m", "tcpaccept.cli", "-v", *mode], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        seen = []
        for line in proc.stdout:  # the banner: stdout in text mode, stderr with --json
            seen.append(line)
            if BANNER in line:
                break
        else:
            raise SystemExit(f"tcpaccept did not start:\n{''.join(seen)}")
        # Keep reading what it prints, or a full pipe would stall it.
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        chosen = [line.strip() for line in seen if "accept program:" in line]
        assert chosen and program in chosen[0], seen
        before = prog_counters(proc.pid)
        drive_accepts(accepts)
        accept4 = delta(before, prog_counters(proc.pid))["programs"]
        name = next(n for n in accept4 if n.startswith("tp_exit_accept4"))
        stats = accept4[name]
        print(f"  {program:<10} {stats['runs']:>7} runs  {stats['ns_per_run']:>6.0f} ns/run",
              flush=True)
        return stats["ns_per_run"]
    finally:
        proc.send_signal(2)
        proc.wait(20)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--accepts", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--mode", default="", help="tcpaccept flags, e.g. '--json'")
    args = parser.parse_args()
    results: dict[str, list[float]] = {program: [] for program in PROGRAMS}
    with RunTimeStats() as stats:
        if stats.error:
            raise SystemExit(f"no BPF run-time stats: {stats.error}")
        for _ in range(args.rounds):
            for program in results:
                results[program].append(one_round(program, args.accepts, args.mode.split()))
    for program, values in results.items():
        print(f"{program:<10} median {statistics.median(values):.0f} ns per accept "
              f"(min {min(values):.0f}, max {max(values):.0f}, {args.rounds} rounds)")


if __name__ == "__main__":
    main()
