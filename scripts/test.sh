#!/usr/bin/env bash
# `make test`: unit and simulator tests, the testbed lifecycle, then the end-to-end tests on the
# testbed. The tests own the testbed: it is taken down at the end whatever happens.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
trap '.venv/bin/python -m testbed down >/dev/null 2>&1 || true' EXIT
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
