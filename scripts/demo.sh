#!/usr/bin/env bash
# `make demo`, after setup, `testbed up` and the image push: deploy the dev stack with `pulumi up` and
# send the seed request through the proxy it reports.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PULUMI="$ROOT/bin/pulumi"

"$PULUMI" stack select dev 2>/dev/null || "$PULUMI" stack init dev
# The provider reads nothing back from the hosts, so a deployment recorded on an earlier testbed (taken
# down since, with every file and container on it) would look up to date. `destroy` forgets it first;
# its deletes find nothing to remove. The marker names the testbed the last demo deployed to.
marker="$ROOT/.pdstack/demo-testbed"
instance=$("$ROOT/.venv/bin/python" -m testbed instance)
if [ "$(cat "$marker" 2>/dev/null)" != "$instance" ]; then
  echo "demo: a new testbed: removing what the dev stack records of an earlier one (bin/pulumi destroy)"
  rm -f "$marker"
  "$PULUMI" destroy --yes --non-interactive >/dev/null
fi
"$PULUMI" up --yes --non-interactive
echo "$instance" >"$marker"

endpoint=$("$PULUMI" stack output endpoint)
echo "demo: POST $endpoint/v1/completions"
out=$(curl -sN --noproxy '*' --max-time 60 -X POST "$endpoint/v1/completions" -H "Content-Type: application/json" -d \
  '{"model":"deepseek","temperature":0,"max_tokens":50,"prompt":"how are you?","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}')
echo "$out"
if ! grep -q '"usage"' <<<"$out" || ! grep -q 'data: \[DONE\]' <<<"$out"; then
  echo "demo: the response did not stream to [DONE] with usage" >&2
  exit 1
fi
echo "demo: done. 'bin/pulumi destroy' removes the deployment; 'make testbed-down' the testbed."
