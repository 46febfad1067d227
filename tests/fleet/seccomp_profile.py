"""The shipped Localhost seccomp profile, made from a runtime's default profile.

containers-common's default (moby's format: rules conditioned on capabilities and
architectures) flattened for a container that holds exactly CAP_BPF and CAP_PERFMON, with
bpf and perf_event_open allowed: containerd reads Localhost profiles as plain OCI seccomp
(no capability conditions), so the shipped file must be flat. Architecture-only rules are
kept for all (runc skips a syscall name the machine does not have).

    .venv/bin/python -m tests.fleet.seccomp_profile   # rewrites deploy/kubernetes/seccomp/
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.fleet.deployment import KUBERNETES

HOST_DEFAULT = Path("/usr/share/containers/seccomp.json")  # Debian 12: containers-common 0.50
AGENT_CAPS = {"CAP_BPF", "CAP_PERFMON"}
OPENED = {"bpf": "CAP_BPF", "perf_event_open": "CAP_PERFMON"}
ARCHITECTURES = ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32",
                 "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]


def _applies(rule: dict[str, Any], caps: set[str]) -> bool:
    needs = set((rule.get("includes") or {}).get("caps") or [])
    refuses = set((rule.get("excludes") or {}).get("caps") or [])
    return needs <= caps and not refuses & caps


def flat_profile(default: dict[str, Any]) -> dict[str, Any]:
    rules = []
    for rule in default["syscalls"]:
        if not _applies(rule, AGENT_CAPS):
            continue
        names = [name for name in rule["names"] if name not in OPENED]
        if not names:
            continue
        flat = {"names": names, "action": rule["action"]}
        for key in ("args", "errnoRet"):
            if rule.get(key):
                flat[key] = rule[key]
        rules.append(flat)
    rules.append({"names": sorted(OPENED), "action": "SCMP_ACT_ALLOW"})
    return {"defaultAction": default["defaultAction"],
            "defaultErrnoRet": default["defaultErrnoRet"],
            "architectures": ARCHITECTURES, "syscalls": rules}


def allowed(profile: dict[str, Any], caps: set[str]) -> set[str]:
    """Syscalls some rule allows (unconditionally or by arguments) for a holder of caps."""
    return {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ALLOW"
            and _applies(rule, caps) for name in rule["names"]}


if __name__ == "__main__":
    target = KUBERNETES / "seccomp" / "tcpaccept.json"
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(flat_profile(json.loads(HOST_DEFAULT.read_text())),
                                 indent=1) + "\n")
    print(target)
