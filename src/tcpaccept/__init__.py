"""tcpaccept: trace passive TCP connections (accept()) with eBPF.

The importable API: build a Config, open a Tracer, decode its records into Accept objects
with the decoder the tracer gives (the record layout is read from the loaded object).

    from tcpaccept import Config, Tracer
    with Tracer(Config(lports=frozenset({80}))) as tracer:
        decode = tracer.decoder().decode
        for record in tracer.poll(1000):
            print(decode(record))
"""

from .config import Config
from .event import Decoder
from .model import Accept, Container, Drop, Lost
from .tracer import Tracer

Event = Accept  # the name before the model objects

__all__ = ["Accept", "Config", "Container", "Decoder", "Drop", "Event", "Lost", "Tracer"]
__version__ = "0.1.0"
