"""pdstack simulator: stands in for vLLM / vLLM-Ascend engines, Ray and Omni-Infer's
global proxy so a deployment can be exercised without Ascend hardware.

Every answer the simulator gives says that it is a simulator (see SIMULATOR_ID).
"""

VERSION = "0.1.0"
SIMULATOR_ID = f"pdstack-simulator {VERSION}"
# The vLLM release the flags and response shapes follow (Omni-Infer v0.4.x patches vLLM 0.9.x).
MIMICS_VLLM = "0.9.0"
