#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root) to the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh tests/unit -x).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
.venv/bin/ruff check src tests bench
exec .venv/bin/python -m pytest -ra "$@"
