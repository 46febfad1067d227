"""Listener table read cost against the machine's open files (issue 18).

    sudo .venv/bin/python bench/listener_read_cost.py [--fds 2000,20000,100000]
                                                    [--listeners 1000] [--reads 20]

One read of the task_file iterator (bpf/listeners.bpf.c) walks every open file of every
task, so its cost follows the machine's open files, not its listeners. The bench opens
--listeners TCP listeners (loopback, IPv4), then tops the machine up to each --fds total
of open files (/proc/sys/fs/file-nr, its first field: allocated file handles) with files of
its own (/dev/null, one struct file each; held by helper processes of up to 10,000 files,
since the fd limit here is 20,000 per process), and prints per total: one read (kernel walk +
decode + merge) median and p90 over --reads, the listeners seen, the interval the agent
picks for that cost (listeners/watch.py: interval_for), the CPU share that gives, and the
event loop's worst stall while reads run on their thread (the longest overshoot of a 10 ms
sleep on the main thread, and the same without reads: the machine's own noise). Each read()
of the iterator returns after a few thousand files (ticks: bpf/listeners.bpf.c TICK_FILES).
For comparison, the sock_diag monitor's poll over every network namespace (its cost
follows listeners and namespaces, not files) on the same machine.
Exit 1 if a read misses one of the bench's listeners.
"""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import statistics
import sys
import threading
import time
from typing import Callable

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "src"))

from tcpaccept.drops import ListenerDropMonitor  # noqa: E402
from tcpaccept.listeners import ListenerWatch, interval_for  # noqa: E402


def open_files_now() -> int:
    with open("/proc/sys/fs/file-nr") as f:
        return int(f.read().split()[0])


FILES_PER_HOLDER = 10000


def hold_files(count: int) -> int:
    """A child process holding `count` open files until killed; returns its pid once they
    are open."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(ready_r)
            for _ in range(count):
                os.open("/dev/null", os.O_RDONLY)
            os.write(ready_w, b"1")
            while True:
                signal.pause()
        finally:
            os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    return pid


def loop_stall_ms(watch: ListenerWatch, reads: int) -> tuple[float, float]:
    """The event loop's worst extra delay while `reads` reads run on another thread, as
    ListenerWatch runs them (the longest overshoot of a 10 ms sleep), and the same for as
    long without reads: what a busy machine alone does to the loop."""
    def reads_in_a_row() -> None:
        for _ in range(reads):
            watch.refresh()

    with_reads = _stall_while(reads_in_a_row)
    started = time.perf_counter()
    watch.refresh()
    watch.refresh()
    took = (time.perf_counter() - started) / 2 * reads
    return with_reads, _stall_while(lambda: time.sleep(took))


def _stall_while(work: Callable[[], object]) -> float:
    done = threading.Event()

    def reader() -> None:
        work()
        done.set()

    thread = threading.Thread(target=reader)
    worst = 0.0
    thread.start()
    while not done.is_set():
        start = time.perf_counter()
        time.sleep(0.01)
        worst = max(worst, time.perf_counter() - start - 0.01)
    thread.join()
    return worst * 1e3


def timed(fn: object, reads: int) -> tuple[float, float]:
    """(median, p90) in ms of `reads` calls."""
    times = []
    for _ in range(reads):
        start = time.perf_counter()
        fn()  # type: ignore[operator]
        times.append((time.perf_counter() - start) * 1e3)
    times.sort()
    return statistics.median(times), times[int(len(times) * 0.9) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fds", default="2000,20000,100000")
    parser.add_argument("--listeners", type=int, default=1000)
    parser.add_argument("--reads", type=int, default=20)
    args = parser.parse_args()
    totals = sorted(int(n) for n in args.fds.split(","))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    listeners = []
    for _ in range(args.listeners):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        listeners.append(sock)
    inodes = {os.fstat(s.fileno()).st_ino for s in listeners}
    holders: list[int] = []
    failed = 0
    print(f"listeners: {args.listeners} of this process; reads per point: {args.reads}")
    print(f"{'open files':>10} {'read median':>12} {'p90':>9} {'listeners':>9} "
          f"{'interval':>9} {'CPU':>6} {'loop stall/idle':>15} {'sock_diag poll':>15}")
    with ListenerWatch() as watch, ListenerDropMonitor() as diag:
        watch.refresh()
        diag.poll()
        for total in totals:
            while open_files_now() < total:
                holders.append(hold_files(min(FILES_PER_HOLDER, total - open_files_now())))
            median, p90 = timed(watch.refresh, args.reads)
            seen = watch.snapshot().listeners
            if not inodes <= seen.keys():
                failed += 1
            stall, idle_stall = loop_stall_ms(watch, args.reads)
            diag_median, _ = timed(diag.poll, args.reads)
            interval = interval_for(median / 1e3)
            print(f"{open_files_now():>10} {median:>9.2f} ms {p90:>6.2f} ms {len(seen):>9} "
                  f"{interval:>7.2f} s {median / 10 / interval:>5.2f}% "
                  f"{stall:>6.1f}/{idle_stall:<5.1f}ms "
                  f"{diag_median:>12.2f} ms")
    for pid in holders:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    for sock in listeners:
        sock.close()
    if failed:
        print(f"FAILED: {failed} reads missed listeners of this bench", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
