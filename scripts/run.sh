#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root) to tracing: set up, then trace.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
bash "$here/scripts/setup.sh"
exec "$here/.venv/bin/tcpaccept" "$@"
