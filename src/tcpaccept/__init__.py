"""tcpaccept: trace passive TCP connections (accept()) with eBPF.

The importable API: build a Config, open a Tracer, decode its records with a Decoder.

    from tcpaccept import Config, Tracer, Decoder
    with Tracer(Config(lports=frozenset({80}))) as tracer:
        decoder = Decoder()
        for record in tracer.poll(1000):
            print(decoder.decode(record))
"""

from .config import Config
from .event import Decoder, Event
from .tracer import Tracer

__all__ = ["Config", "Decoder", "Event", "Tracer"]
__version__ = "0.1.0"
