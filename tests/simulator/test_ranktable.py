"""Ranktables: an engine refuses to start unless the local ranktable lists this host (with the
visible devices) and the global one contains it. Addresses are found without traffic."""

import ipaddress

from simhelpers import (free_port, new_host, sim_env, wait_health, write_global_ranktable,
                        write_local_ranktable)
from simulator import netaddr, ranktable

FOREIGN = "198.51.100.7"  # TEST-NET-2: never an address of this machine

FIB_TRIE = """Main:
  +-- 0.0.0.0/0 3 0 4
     |-- 0.0.0.0
        /0 universe UNICAST
Local:
  +-- 0.0.0.0/0 3 0 4
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     +-- 10.77.0.0/24 2 0 2
           |-- 10.77.0.0
              /24 link UNICAST
           |-- 10.77.0.12
              /32 host LOCAL
"""

IP_ADDR = """1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
7: eth0    inet 10.77.0.12/24 brd 10.77.0.255 scope global eth0\\       valid_lft forever
"""


def test_parse_fib_trie_local_table_only():
    nets = netaddr.parse_fib_trie(FIB_TRIE)
    assert ipaddress.IPv4Network("127.0.0.0/8") in nets
    assert ipaddress.IPv4Network("10.77.0.12/32") in nets
    assert ipaddress.IPv4Network("10.77.0.0/24") not in nets
    assert netaddr.is_local("127.3.4.5", nets)
    assert netaddr.is_local("10.77.0.12", nets)
    assert not netaddr.is_local("10.77.0.13", nets)


def test_parse_ip_addr():
    pairs = netaddr.parse_ip_addr(IP_ADDR)
    assert [(i, str(a)) for i, a in pairs] == [("lo", "127.0.0.1/8"), ("eth0", "10.77.0.12/24")]


def test_local_ranktable_checks(tmp_path):
    nets = netaddr.parse_fib_trie(FIB_TRIE)
    rt = write_local_ranktable(tmp_path / "local.json", [("10.77.0.12", [0, 1, 2, 3])])
    assert ranktable.check_local(rt, "0,1,2,3", nets)["server_ip"] == "10.77.0.12"
    try:
        ranktable.check_local(rt, "0,1,4", nets)
        raise AssertionError("missing device 4 accepted")
    except ranktable.RanktableError as e:
        assert "['4']" in str(e)
    other = write_local_ranktable(tmp_path / "other.json", [("10.77.0.13", [0])])
    try:
        ranktable.check_local(other, None, nets)
        raise AssertionError("foreign ranktable accepted")
    except ranktable.RanktableError as e:
        assert "10.77.0.13" in str(e)
    # pd_run.sh-style patterns resolve to the single match
    assert ranktable.check_local(str(tmp_path / "loc*.json"), None, nets)


def _engine(procs, model_dir, host, env):
    port = free_port(host)
    return port, procs.vllm(model_dir, "--host", host, "--port", str(port), env=env,
                            name="ranked")


def test_local_ranktable_without_this_host_refuses_to_start(procs, model_dir, tmp_path):
    host = new_host()
    rt = write_local_ranktable(tmp_path / "local.json", [(FOREIGN, list(range(16)))])
    port, p = _engine(procs, model_dir, host, sim_env(RANK_TABLE_FILE_PATH=rt))
    assert p.wait(10) != 0
    assert FOREIGN in p.output() and "none of which is an address of this host" in p.output()


def test_local_ranktable_missing_visible_device_refuses_to_start(procs, model_dir, tmp_path):
    host = new_host()
    rt = write_local_ranktable(tmp_path / "local.json", [(host, [0, 1])])
    port, p = _engine(procs, model_dir, host,
                      sim_env(RANK_TABLE_FILE_PATH=rt, ASCEND_RT_VISIBLE_DEVICES="0,1,2"))
    assert p.wait(10) != 0
    assert "needs ['2']" in p.output()


def test_global_ranktable_without_this_host_refuses_to_start(procs, model_dir, tmp_path):
    host = new_host()
    local = write_local_ranktable(tmp_path / "local.json", [(host, [0, 1])])
    glob = write_global_ranktable(tmp_path / "global.json", [[FOREIGN], ["198.51.100.8"]])
    port, p = _engine(procs, model_dir, host,
                      sim_env(RANK_TABLE_FILE_PATH=local, GLOBAL_RANK_TABLE_FILE_PATH=glob))
    assert p.wait(10) != 0
    assert "global ranktable" in p.output()


def test_missing_ranktable_file_refuses_to_start(procs, model_dir, tmp_path):
    host = new_host()
    port, p = _engine(procs, model_dir, host,
                      sim_env(RANK_TABLE_FILE_PATH=str(tmp_path / "absent.json")))
    assert p.wait(10) != 0
    assert "does not exist" in p.output()


def test_matching_ranktables_start(procs, model_dir, tmp_path):
    host = new_host()
    local = write_local_ranktable(tmp_path / "local.json", [(host, [0, 1])])
    glob = write_global_ranktable(tmp_path / "global.json", [[FOREIGN], [host]])
    port, p = _engine(procs, model_dir, host,
                      sim_env(RANK_TABLE_FILE_PATH=local, GLOBAL_RANK_TABLE_FILE_PATH=glob,
                              ASCEND_RT_VISIBLE_DEVICES="0,1"))
    wait_health(host, port, proc=p)
    assert "this host is in group 1" in p.output()
