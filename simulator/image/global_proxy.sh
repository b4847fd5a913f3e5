#!/bin/bash
# Installed as /workspace/omniinfer/tools/scripts/global_proxy.sh on the simulator image, where
# Omni-Infer keeps its nginx-based global proxy script. Same flags; see simulator/proxy.py
# (it adds --foreground to stay in the foreground instead of daemonizing like nginx).
PDSIM_HOME="${PDSIM_HOME:-/opt/pdstack-simulator}"
export PYTHONPATH="$PDSIM_HOME${PYTHONPATH:+:$PYTHONPATH}"
exec python3 -m simulator.proxy "$@"
