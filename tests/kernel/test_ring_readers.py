"""Both readers of the kernel ring (ring_buffer.py) hand over every record, in order, as the
ring wraps again and again: MappedRing, which reads the ring's pages itself (x86-64), and
libbpf's ring_buffer, which every other machine uses. Through the Python API, so that
each reader can be chosen on this host."""

from __future__ import annotations

import platform
import time

import pytest

from tcpaccept import Config, Tracer, ring_buffer
from tcpaccept import tracer as tracer_module
from tests.support.servers import connect, start_server
from tests.support.tracer import PROBE

pytestmark = pytest.mark.method_agnostic  # after the programs: the reading only

RING_BYTES = 4096  # the smallest ring: a few dozen records before it wraps
BURSTS, PER_BURST = 30, 10

READERS = [
    pytest.param(ring_buffer.MappedRing, id="mapped", marks=pytest.mark.skipif(
        platform.machine() != "x86_64", reason="MappedRing reads the ring on x86-64 only")),
    pytest.param(ring_buffer.RingBuffer, id="libbpf"),
]


@pytest.mark.parametrize("reader", READERS)
def test_every_record_in_order_across_many_wraps(monkeypatch: pytest.MonkeyPatch,
                                                  reader: type) -> None:
    monkeypatch.setattr(tracer_module, "open_ring", reader)
    with start_server() as server:
        tracer = Tracer(Config(probe=PROBE, pids=frozenset({server.pid}),
                               ring_buffer_bytes=RING_BYTES))
        try:
            tracer.start()
            assert isinstance(tracer._ring, reader)
            slots = RING_BYTES // tracer.layout.ring_slot_bytes
            assert 5 * slots < BURSTS * PER_BURST  # the ring wraps five times or more
            decode = tracer.decoder().decode
            expected, got = [], []
            for _ in range(BURSTS):
                clients = [connect("127.0.0.1", server.port) for _ in range(PER_BURST)]
                expected += [peer_port for _addr, peer_port, _fd in server.accept(PER_BURST)]
                deadline = time.monotonic() + 10
                while len(got) < len(expected) and time.monotonic() < deadline:
                    got += [decode(record).rport for record in tracer.poll(100)]
                for client in clients:
                    client.close()
            time.sleep(0.2)
            got += [decode(record).rport for record in tracer.poll(0)]
            lost = tracer.lost_events()
        finally:
            tracer.close()
    assert lost == 0
    assert got == expected
