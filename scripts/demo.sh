#!/usr/bin/env bash
# The demo before the Pulumi program exists: one simulated prefill (host1), one decode (host2) and the
# PD proxy (host3) started with hand-written docker commands over SSH, then the seed request.
# Expects the testbed up and the simulator image pushed (`make demo` does both first).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PY=.venv/bin/python
IMAGE=$($PY -c 'import simulator; from testbed.layout import REGISTRY; print(f"{REGISTRY}/pdstack/simulator:{simulator.VERSION}")')
MODEL=/data/models/origin/bf16

hosts_json=$($PY -m testbed hosts --json)
field() { $PY -c 'import json,sys; h={x["name"]: x for x in json.loads(sys.argv[1])}[sys.argv[2]]; print(h[sys.argv[3]])' "$hosts_json" "$1" "$2"; }
P=$(field host1 address); D=$(field host2 address); C=$(field host3 address)
KEY=$(field host1 privateKeyPath)
KNOWN=$(mktemp)
trap 'rm -f "$KNOWN"' EXIT
$PY -c 'import json,sys; [print(h["address"], h["hostPublicKey"]) for h in json.loads(sys.argv[1])]' "$hosts_json" >"$KNOWN"
ssh_to() { ssh -i "$KEY" -o BatchMode=yes -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$KNOWN" "root@$1" "$2"; }

# The docker flags of the reference deployment that matter on the testbed (host network, privileged,
# the host's /data, /tmp and /etc/hosts at the same paths).
RUN="docker run -d --net=host --privileged -u root -w /data --shm-size=1g -v /data:/data -v /tmp:/tmp -v /etc/hosts:/etc/hosts"

start() {  # start HOST NAME DOCKER-ARGS...
  local host=$1 name=$2; shift 2
  echo "demo: starting $name on $host"
  ssh_to "$host" "docker rm -f $name >/dev/null 2>&1; docker pull -q $IMAGE >/dev/null && $RUN --name $name $*" >/dev/null
}

wait_healthy() {  # wait_healthy HOST PORT CONTAINER
  for _ in $(seq 1 120); do
    curl -sf --noproxy '*' -o /dev/null "http://$1:$2/health" && { echo "demo: $3 healthy at $1:$2"; return 0; }
    sleep 0.5
  done
  echo "demo: $3 on $1 did not become healthy within 60 s; its last log lines:" >&2
  ssh_to "$1" "docker logs --tail 30 $3" >&2 || true
  exit 1
}

start "$P" pdstack_demo_prefill_host1 \
  -e VLLM_DP_SIZE=1 -e VLLM_DP_RANK=0 -e VLLM_DP_MASTER_IP="$P" -e VLLM_DP_MASTER_PORT=8000 "$IMAGE" \
  vllm serve "$MODEL" --port 9000 --served-model-name deepseek --tensor-parallel-size 1 \
  --data-parallel-address "$P" --data-parallel-rpc-port 8000 --max-model-len 66560 \
  --kv-transfer-config "'{\"kv_connector\":\"AscendHcclConnectorV1\",\"kv_buffer_device\":\"npu\",\"kv_role\":\"kv_producer\",\"kv_rank\":0,\"engine_id\":0,\"kv_parallel_size\":2}'"
start "$D" pdstack_demo_decode_host2 \
  -e VLLM_DP_SIZE=1 -e VLLM_DP_RANK=0 -e VLLM_DP_MASTER_IP="$D" -e VLLM_DP_MASTER_PORT=8100 "$IMAGE" \
  vllm serve "$MODEL" --port 9100 --served-model-name deepseek --tensor-parallel-size 1 \
  --data-parallel-address "$D" --data-parallel-rpc-port 8100 --max-model-len 66560 \
  --kv-transfer-config "'{\"kv_connector\":\"AscendHcclConnectorV1\",\"kv_buffer_device\":\"npu\",\"kv_role\":\"kv_consumer\",\"kv_rank\":1,\"engine_id\":1,\"kv_parallel_size\":2}'"
wait_healthy "$P" 9000 pdstack_demo_prefill_host1
wait_healthy "$D" 9100 pdstack_demo_decode_host2
start "$C" pdstack_demo_proxy_host3 "$IMAGE" \
  /workspace/omniinfer/tools/scripts/global_proxy.sh --foreground --listen-port 7000 \
  --prefill-servers-list "$P:9000" --decode-servers-list "$D:9100" \
  --prefill-lb-sdk pd_score_balance --decode-lb-sdk pd_score_balance
wait_healthy "$C" 7000 pdstack_demo_proxy_host3

echo "demo: POST http://$C:7000/v1/completions"
out=$(curl -sN --noproxy '*' --max-time 60 -X POST "http://$C:7000/v1/completions" -H "Content-Type: application/json" -d \
  '{"model":"deepseek","temperature":0,"max_tokens":50,"prompt":"how are you?","stream":true,"stream_options":{"include_usage":true,"continuous_usage_stats":true}}')
echo "$out"
if ! grep -q '"usage"' <<<"$out" || ! grep -q 'data: \[DONE\]' <<<"$out"; then
  echo "demo: the response did not stream to [DONE] with usage" >&2
  exit 1
fi
echo "demo: done. Containers stay up; 'make testbed-down' removes everything."
