"""Which IPv4 addresses belong to this host, found without sending any traffic.

Real Ascend tooling discovers the host IP by asking the resolver or the routing table;
the simulator reads the kernel's local routing table instead, so a wrong address in a
ranktable or a DP master setting is caught the same way real hardware would catch it.
"""

import ipaddress
import socket
import subprocess

FIB_TRIE = "/proc/net/fib_trie"
ROUTE_TABLE = "/proc/net/route"


def parse_fib_trie(text: str) -> list[ipaddress.IPv4Network]:
    """Networks the kernel treats as local ("host LOCAL" entries of the Local table).

    A /32 entry is one interface address; a wider one (127.0.0.0/8 on lo) means every
    address inside it is accepted locally.
    """
    nets: list[ipaddress.IPv4Network] = []
    in_local = False
    leaf = None
    for raw in text.splitlines():
        line = raw.strip()
        if not raw.startswith(" "):
            in_local = line.startswith("Local:")
            continue
        if not in_local:
            continue
        if line.startswith("|--"):
            leaf = line[3:].strip()
        elif line.startswith("/") and leaf and line.endswith("host LOCAL"):
            prefix = line.split()[0][1:]
            try:
                nets.append(ipaddress.IPv4Network(f"{leaf}/{prefix}", strict=False))
            except ValueError:
                pass
    return _dedupe(nets)


def parse_ip_addr(text: str) -> list[tuple[str, ipaddress.IPv4Interface]]:
    """(interface, address/prefix) pairs from `ip -4 -o addr` output."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if "inet" not in parts:
            continue
        i = parts.index("inet")
        try:
            out.append((parts[1], ipaddress.IPv4Interface(parts[i + 1])))
        except (ValueError, IndexError):
            continue
    return out


def _dedupe(nets):
    seen, out = set(), []
    for n in nets:
        if n not in seen:
            seen.add(n)
            out.append(n)
    return out


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _ip_addr_output() -> str:
    try:
        return subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True,
                              timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def local_networks() -> list[ipaddress.IPv4Network]:
    nets = parse_fib_trie(_read(FIB_TRIE))
    if nets:
        return nets
    # No /proc/net/fib_trie (some sandboxes hide it): fall back to `ip`; addresses on lo
    # cover their whole prefix, exactly as the kernel's local route for lo does.
    for ifname, iface in parse_ip_addr(_ip_addr_output()):
        nets.append(iface.network if ifname == "lo" else ipaddress.IPv4Network(f"{iface.ip}/32"))
    return _dedupe(nets) or [ipaddress.IPv4Network("127.0.0.0/8")]


def is_local(addr: str, nets=None) -> bool:
    try:
        ip = ipaddress.IPv4Address(addr)
    except ValueError:
        return False
    if ip == ipaddress.IPv4Address("0.0.0.0"):
        return True
    return any(ip in n for n in (nets if nets is not None else local_networks()))


def interface_addresses(nets=None) -> list[str]:
    """Addresses assigned to interfaces (the /32 local entries)."""
    nets = nets if nets is not None else local_networks()
    return [str(n.network_address) for n in nets if n.prefixlen == 32]


def _default_route_interface() -> str | None:
    for line in _read(ROUTE_TABLE).splitlines()[1:]:
        parts = line.split()
        if len(parts) > 2 and parts[1] == "00000000":
            return parts[0]
    return None


def host_address() -> str:
    """The address other hosts reach this one on: the default-route interface's address,
    else the first non-loopback address, else 127.0.0.1."""
    pairs = parse_ip_addr(_ip_addr_output())
    dev = _default_route_interface()
    for ifname, iface in pairs:
        if ifname == dev and not iface.ip.is_loopback:
            return str(iface.ip)
    for ifname, iface in pairs:
        if not iface.ip.is_loopback:
            return str(iface.ip)
    for a in interface_addresses():
        if not ipaddress.IPv4Address(a).is_loopback:
            return a
    return "127.0.0.1"


def resolve(host: str) -> str:
    """IPv4 literal for host; names are looked up through the system resolver (/etc/hosts)."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        return socket.gethostbyname(host)


def split_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    text = text.strip()
    for prefix in ("tcp://", "http://"):
        if text.startswith(prefix):
            text = text[len(prefix):]
    host, sep, port = text.rpartition(":")
    if not sep:
        if default_port is None:
            raise ValueError(f"{text!r} is not HOST:PORT")
        return text, default_port
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)
