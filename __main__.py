"""pdstack: prefill/decode-disaggregated LLM serving on bare-metal hosts, from this stack's config.

Layers: pdstack.config (parse + validate) -> pdstack.rendering (pure: what runs where) ->
components (thin Pulumi wiring over SSH). Nothing remote happens before the config is valid.
"""
import pulumi
from pulumi.runtime import config as runtime_config

from components import sdk_debug
from components.connection import connection
from components.devices import DeviceAddresses, DeviceAddressesArgs, GlobalRanktable, GlobalRanktableArgs
from components.groups import (DecodeGroup, DecodeGroupArgs, GlobalProxy, GlobalProxyArgs, PrefillGroup,
                               PrefillGroupArgs)
from components.order import CONTAINER_IDS, DECODE_ENDPOINTS, PreviousDeployment, rolling_after
from pdstack import image_resolve, profile, topology
from pdstack.config.known_hosts import pin_host_keys
from pdstack.config.parse import ConfigError, check_local_files, parse_cluster
from pdstack.rendering import ranktable
from pdstack.rendering.plan import records_dir, render


def load_spec():
    raw = dict(runtime_config.CONFIG.get()) or runtime_config.get_config_env()
    try:
        spec = parse_cluster(raw)
        check_local_files(spec)
        spec = pin_host_keys(spec)
    except ConfigError as err:
        # RunError: the message alone, no traceback, and the engine stops before any resource.
        raise pulumi.RunError(f"invalid stack config:\n{err}") from None
    return spec


sdk_debug.mute_unless_asked()
spec = load_spec()
deployment = render(spec)

try:
    image, problem = image_resolve.resolve(spec.image)
except image_resolve.ImageNotInRegistry as err:
    raise pulumi.RunError(f"invalid stack config:\npdstack:image: {err}") from None
if problem:
    pulumi.log.warn(f"{problem}; deploying by tag, so a re-pushed tag will not replace containers")
unpinned = sorted(h.name for h in spec.hosts if not h.ssh.host_key)
if unpinned:
    pulumi.log.warn(f"host keys are not verified for {', '.join(unpinned)}: set pdstack:hosts.<name>.hostKey, "
                    "or pdstack:ssh.knownHostsFile, to pin them")

# First, before any resource: see PreviousDeployment.
previous = PreviousDeployment()
connections = {h.name: connection(h) for h in spec.hosts}

device_hosts = deployment.device_reads()
devices = DeviceAddresses("devices", DeviceAddressesArgs(hosts=device_hosts, connections=connections))
addresses = devices.addresses.apply(
    lambda found: {h: {int(d): a for d, a in addrs.items()} for h, addrs in found.items()})
ranktables = addresses.apply(lambda a: ranktable.render_ranktables(spec, a))
global_file = addresses.apply(lambda a: ranktable.render_global_ranktable(spec, a))
global_ranktable = GlobalRanktable("global-ranktable", GlobalRanktableArgs(
    hosts={name: host for name, (host, _) in device_hosts.items()}, connections=connections,
    path=ranktable.global_path(spec), records=records_dir(spec), file=global_file))
shared = dict(image=image, connections=connections, ranktables=ranktables, global_ranktable=global_file,
              global_written=global_ranktable.written, readiness=spec.readiness)

prefill = [PrefillGroup(inst.name, PrefillGroupArgs(plans=plans, **shared)) for inst, plans in deployment.prefill]
decode: list[DecodeGroup] = []
for inst, plans in deployment.decode:
    # A rolling update: an instance that was serving is replaced only once the previous one is ready
    # again and the proxy routes to it (its fail_timeout). Nothing of an instance flows into the next
    # one's inputs, so replacing one replaces only it.
    after = (rolling_after(previous, inst.name, list(decode[-1].hosts.values()), profile.PROXY_FAIL_TIMEOUT_SECONDS + 1)
             if decode else None)
    decode.append(DecodeGroup(inst.name, DecodeGroupArgs(plans=plans, **shared, after=after)))
proxy = GlobalProxy("proxy", GlobalProxyArgs(
    plan=deployment.proxy, image=image, connection=connections[deployment.proxy.host.name],
    readiness=spec.readiness, upstreams=[r for g in prefill + decode for r in g.ready]))

pulumi.export("endpoint", f"http://{deployment.proxy.host.address}:{spec.proxy.port}")
pulumi.export("image", image)
pulumi.export("prefillEndpoints", {inst.name: f"http://{spec.host(inst.hosts[0]).address}:{topology.prefill_api_port(spec, inst)}"
                                   for inst in spec.prefill})
pulumi.export(DECODE_ENDPOINTS, {inst.name: [f"http://{p.host.address}:{h.port}" for p in plans for h in p.health]
                                  for inst, plans in deployment.decode})
pulumi.export("containers", {p.host.name: sorted(q.container.name for q in deployment.plans() if q.host.name == p.host.name)
                             for p in deployment.plans()})
pulumi.export(CONTAINER_IDS, {hc.container_name: hc.container.stdout
                               for hc in [h for g in prefill + decode for h in g.hosts.values()] + [proxy.host]})
pulumi.export("logs", {p.container.name: f"{p.host.name}:{p.log_dir}" for p in deployment.plans()})
pulumi.export("proxyReady", proxy.ready.stdout)
