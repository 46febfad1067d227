"""What runs next to nginx in each cost run: nothing, tcpaccept in one of its modes, or the
bpftrace peer; and where its output goes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from bench.common import PEER_SCRIPT, which

# A uid nobody on this machine runs as: the hook runs on every accept and the in-kernel
# filter drops each one, so this is the cost of being attached at all (the floor).
FLOOR_UID = "4242"
SUMMARY_INTERVAL = "60"  # longer than any load: the table is printed once, at exit

LABELS = {
    "floor": f"tcpaccept -u {FLOOR_UID} (floor)",
    "text": "tcpaccept",
    "json": "tcpaccept --json",
    "summary": f"tcpaccept -s {SUMMARY_INTERVAL}",
    "metrics": "tcpaccept --metrics --quiet",
    "peer": "bpftrace peer",
}


@dataclass(frozen=True)
class Variant:
    name: str
    kind: Optional[str]  # None (untraced) or a key of LABELS
    counted: bool = False  # stdout to a file whose accepts are counted, else /dev/null

    def command(self, tool: Path, metrics_port: int) -> list[str]:
        if self.kind == "peer":
            return [which("bpftrace"), str(PEER_SCRIPT)]
        extra = {
            "floor": ["-u", FLOOR_UID],
            "text": [],
            "json": ["--json"],
            "summary": ["-s", SUMMARY_INTERVAL],
            "metrics": ["--metrics", f"127.0.0.1:{metrics_port}", "--quiet"],
        }[self.kind or ""]
        return [str(tool), *extra]

    @property
    def is_tool(self) -> bool:
        """tcpaccept (whose failures break the bench), not the peer."""
        return self.kind is not None and self.kind != "peer"

    @property
    def exact(self) -> bool:
        """Its accepts are counted and must equal nginx's: the printed lines of a counted
        run, the scraped tcpaccept_accepts_total of the metrics agent."""
        return self.counted or self.kind == "metrics"

    @property
    def banner_stream(self) -> str:
        # tcpaccept prints its banner on stdout, on stderr with --json or --quiet; the
        # peer's BEGIN prints it on stdout.
        return "stderr" if self.kind in ("json", "metrics") else "stdout"

    @property
    def label(self) -> str:
        if self.kind is None:
            return "untraced"
        if self.counted:
            return f"{LABELS[self.kind]} -> counted file"
        return f"{LABELS[self.kind]} > /dev/null"


UNTRACED = Variant("untraced", None)
VARIANTS_FULL = [
    UNTRACED,
    Variant("floor", "floor"),
    Variant("text", "text"),
    Variant("json", "json"),
    # The summary is a few lines: always counted (its ACCEPTS must equal nginx's).
    Variant("summary", "summary", True),
    Variant("metrics", "metrics"),
    Variant("peer", "peer"),
    Variant("text+count", "text", True),
    Variant("json+count", "json", True),
    Variant("peer+count", "peer", True),
]
# --quick (CI): the floor, the aggregating modes, and the counted runs that give both a
# cost and an exact completeness figure for text, JSON, metrics and the peer.
VARIANTS_QUICK = [v for v in VARIANTS_FULL
                  if v.kind in (None, "floor", "metrics") or v.counted]
