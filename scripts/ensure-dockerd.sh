#!/usr/bin/env bash
# Starts the machine's own dockerd when none answers. The machines ship only the docker client and no
# init system runs services, so the project starts the daemon itself. It must trust the testbed's
# registry (plain HTTP on the testbed bridge) so that `docker push` of the simulator image works.
set -euo pipefail
REGISTRY_NET="${PDSTACK_TESTBED_SUBNET:-10.77.0.0/24}"
LOG_DIR="${PDSTACK_LOG_DIR:-/var/log/pdstack}"

if docker info >/dev/null 2>&1; then
  if ! docker info --format '{{json .RegistryConfig.InsecureRegistryCIDRs}}' | grep -q "${REGISTRY_NET%/*}"; then
    echo "ensure-dockerd: a dockerd is already running but does not trust ${REGISTRY_NET} as an insecure" >&2
    echo "  registry; add \"insecure-registries\": [\"${REGISTRY_NET}\"] to /etc/docker/daemon.json and restart it." >&2
    exit 1
  fi
  exit 0
fi
command -v dockerd >/dev/null || { echo "ensure-dockerd: dockerd missing; run 'make setup'" >&2; exit 1; }
mkdir -p "$LOG_DIR"
setsid dockerd --insecure-registry "$REGISTRY_NET" >"$LOG_DIR/dockerd.log" 2>&1 </dev/null &
for _ in $(seq 1 60); do
  docker info >/dev/null 2>&1 && exit 0
  sleep 0.5
done
echo "ensure-dockerd: dockerd did not answer within 30 s; last log lines:" >&2
tail -n 20 "$LOG_DIR/dockerd.log" >&2
exit 1
