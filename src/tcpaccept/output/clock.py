"""Wall-clock text for event times, computed once per second, not once per event."""

from __future__ import annotations

import datetime
import time


class SecondCache:
    """Formats the whole-second part of a timestamp once and reuses it within that second."""

    def __init__(self, render) -> None:  # render(seconds: int) -> str
        self._render = render
        self._second = -1
        self._text = ""

    def __call__(self, seconds: int) -> str:
        if seconds != self._second:
            self._second = seconds
            self._text = self._render(seconds)
        return self._text


def hms(seconds: int) -> str:
    """Local HH:MM:SS, the seed's TIME column."""
    return time.strftime("%H:%M:%S", time.localtime(seconds))


def iso_prefix(seconds: int) -> tuple[str, str]:
    """('YYYY-MM-DDTHH:MM:SS', '+HH:MM') in local time, for ISO 8601 with microseconds."""
    moment = datetime.datetime.fromtimestamp(seconds).astimezone()
    stamp = moment.isoformat(timespec="seconds")
    return stamp[:19], stamp[19:]
