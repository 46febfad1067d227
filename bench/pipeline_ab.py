"""Old against new: bench/pipeline.py's figures for two source trees, interleaved in one
run (a busy machine slows both sides alike), plus a digest of every line each side
printed, so a faster formatter that prints other bytes is caught.

    .venv/bin/python bench/pipeline_ab.py --old /tmp/old/src [--new src] [--rounds 5]

Each sample is a fresh interpreter with PYTHONPATH=<tree>:<repo> (the bench module and the
BPF object come from this checkout, the decoder and formatters from the tree)."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FIGURES = ("text_eps", "json_eps", "text_eps_batch1", "decode_eps")

# Runs inside the child: the pipeline figures, then the digest of all text and JSON lines.
_CHILD = """
import hashlib, io, json, sys
from bench.pipeline import pipeline, synthetic_records, WALL_OFFSET_NS
from tcpaccept.event import Decoder
from tcpaccept.output.json_lines import JsonFormatter
from tcpaccept.output.text import TextFormatter
n, repeats = int(sys.argv[1]), int(sys.argv[2])
figures = pipeline(n, repeats)
digest = hashlib.sha256()
records = synthetic_records(5000)
for formatter in (TextFormatter(), JsonFormatter(), TextFormatter(extended=True, latency=True),
                  TextFormatter(relative_to_ns=4_000_000_000_000 + WALL_OFFSET_NS)):
    decode = Decoder(boot_to_wall_ns=WALL_OFFSET_NS).decode
    for record in records:
        digest.update(formatter.line(decode(record)).encode("utf-8", "surrogateescape"))
figures["digest"] = digest.hexdigest()[:16]
print(json.dumps(figures))
"""


def sample(tree: Path, records: int, repeats: int) -> dict:
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{REPO}",
               TCPACCEPT_BPF_OBJECT=str(REPO / "src/tcpaccept/bpf/tcpaccept.bpf.o"))
    done = subprocess.run([sys.executable, "-c", _CHILD, str(records), str(repeats)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="the old tree's src/")
    parser.add_argument("--new", type=Path, default=REPO / "src", help="the new tree's src/")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    runs: dict[str, list[dict]] = {"old": [], "new": []}
    for i in range(args.rounds):
        order = ("old", "new") if i % 2 == 0 else ("new", "old")  # neither side always first
        for side in order:
            runs[side].append(sample(args.old if side == "old" else args.new,
                                     args.records, args.repeats))
    digests = {side: {r["digest"] for r in samples} for side, samples in runs.items()}
    print(f"{'figure':<16} {'old (median)':>14} {'new (median)':>14} {'new/old':>8}")
    for name in FIGURES:
        old = statistics.median(r[name] for r in runs["old"])
        new = statistics.median(r[name] for r in runs["new"])
        print(f"{name:<16} {old:>14,.0f} {new:>14,.0f} {new / old:>8.2f}")
    same = digests["old"] == digests["new"] and len(digests["new"]) == 1
    print(f"output digest: old {sorted(digests['old'])} new {sorted(digests['new'])} "
          f"({'identical' if same else 'DIFFERENT'})")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
