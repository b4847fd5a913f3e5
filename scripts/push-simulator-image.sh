#!/usr/bin/env bash
# Builds the simulator image (cached) and pushes it to the testbed's registry, which is how the
# testbed's hosts get it: by pulling, as real hosts do. Prints the pushed reference.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
VERSION=$(python3 -c 'import simulator; print(simulator.VERSION)')
REGISTRY=$(.venv/bin/python -c 'from testbed.layout import REGISTRY; print(REGISTRY)')
LOCAL="pdstack-simulator:$VERSION"
REMOTE="$REGISTRY/pdstack/simulator:$VERSION"
bash simulator/image/build.sh "$LOCAL" >&2
docker tag "$LOCAL" "$REMOTE"
docker push -q "$REMOTE" >&2
echo "$REMOTE"
