#!/usr/bin/env bash
# `make test`: unit and simulator tests, the testbed lifecycle, then the end-to-end tests on the
# testbed. The tests own the testbed: it is taken down at the end whatever happens.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
trap '.venv/bin/python -m testbed down >/dev/null 2>&1 || true' EXIT
# The command provider's own tests (a throwaway sshd on loopback), unless only some pytest paths were
# asked for; pytest's summary stays the last line.
if [ $# -eq 0 ]; then
  (cd tools/pulumi-command && GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly go test -count=1 ./...)
fi
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
