"""The run plan: what the kernel and the session do for one set of output flags, derived
once (``RunPlan.of``) and then only read. The CLI takes the kernel's queue-latency hook
from it, the session its kernel modes, sinks, drop policy and container resolution.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from .config import Config, OutputConfig

CONTAINER_LABELS = frozenset({"container", "namespace", "pod"})


class DropPolicy(Enum):
    NONE = "none"  # no drop monitor
    REQUIRED = "required"  # drops are shown (--drops, -s): a monitor that fails ends the run
    BEST_EFFORT = "best-effort"  # --metrics only: a failed monitor is a warning


@dataclass(frozen=True)
class RunPlan:
    # kernel modes
    aggregate: bool  # count per listener in the kernel (summary, metrics)
    emit_records: bool  # send accept records through the ring buffer (lines, -c)
    aggregate_remotes: bool  # the remotes LRU (only -s reads it)
    queue_latency: bool  # the ESTABLISHED -> accept hook
    # sinks
    summary: bool
    metrics: bool
    # what else the session opens
    drops: DropPolicy
    resolve_containers: bool  # a cgroup walk at start and a dict hit per event

    @classmethod
    def of(cls, output: OutputConfig, config: Optional[Config] = None) -> RunPlan:
        summary = bool(output.summary_interval)
        metrics = bool(output.metrics)
        if output.drops or summary:
            drops = DropPolicy.REQUIRED
        elif metrics:  # the agent's drop alert; accepts count without it
            drops = DropPolicy.BEST_EFFORT
        else:
            drops = DropPolicy.NONE
        labelled = metrics and bool(CONTAINER_LABELS & set(output.metrics_labels))
        return cls(
            aggregate=summary or metrics,
            emit_records=not (summary or (metrics and output.quiet)) or bool(output.count),
            aggregate_remotes=summary,
            # Only the default text layout has no use for the queue latency: skip its hook.
            queue_latency=bool(output.latency or output.json or summary or metrics),
            summary=summary,
            metrics=metrics,
            drops=drops,
            resolve_containers=bool(output.json or output.extended or summary or labelled
                                    or bool(config and config.containers)),
        )
