"""Checks of single string values; each raises InvalidValue saying what would be valid."""
from __future__ import annotations

import base64
import binascii
import ipaddress
import re

from .errors import InvalidValue
from .reader import show

# Host names end up in container names (`<prefix>_<host>`) and Pulumi resource names.
HOST_NAME = re.compile(r"[a-z0-9](?:[a-z0-9_-]{0,30}[a-z0-9])?")
# Instance names become resource names and, in the decode case, DP group labels.
INSTANCE_NAME = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,38}[a-z0-9])?")
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

_DNS_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_SSH_USER = re.compile(r"[A-Za-z_][A-Za-z0-9._-]{0,31}")
# Paths are bind-mounted (`-v p:p`, so no ':' or ',') and written into shell scripts.
_ABS_PATH = re.compile(r"/[A-Za-z0-9._+@=/-]*")
_CONTAINER_PREFIX = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
HOST_KEY_TYPES = ("ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521")


def host_name(name: str) -> None:
    if not HOST_NAME.fullmatch(name):
        raise InvalidValue(
            f"host name {show(name)} must be 1-32 lowercase letters, digits, '-' or '_', starting and ending "
            "with a letter or digit, like p0 or node-1 (it becomes part of container names)")


def instance_name(name: str) -> None:
    if not INSTANCE_NAME.fullmatch(name):
        raise InvalidValue(
            f"{show(name)} must be 1-40 lowercase letters, digits or '-', starting and ending with a letter or "
            "digit, like prefill-0 (it becomes part of resource names)")


def address(value: str) -> None:
    hint = "expected an IPv4 address like 10.0.0.1 or a DNS name like node1.example.com"
    labels = value.split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(value)
        except ValueError:
            raise InvalidValue(f"{show(value)} is not a valid IPv4 address; {hint}") from None
        return
    if len(value) > 253 or not all(_DNS_LABEL.fullmatch(label) for label in labels) or labels[-1].isdigit():
        raise InvalidValue(f"{show(value)} is neither an IPv4 address nor a DNS name; {hint}")


def ssh_user(user: str) -> None:
    if not _SSH_USER.fullmatch(user):
        raise InvalidValue(f"{show(user)} is not a valid user name; expected letters, digits, '.', '_' or '-', "
                           "like root")


def key_path(path: str) -> None:
    if not path.strip() or "\0" in path:
        raise InvalidValue(f"{show(path)} is not a file path; expected a path like ~/.ssh/id_ed25519")


def private_key(key: str) -> None:
    # The value is a secret: never echo it.
    if "PRIVATE KEY-----" not in key:
        raise InvalidValue(
            "does not look like a private key (expected a PEM block \"-----BEGIN ... PRIVATE KEY-----\"; the "
            "value is not shown); to use a key file instead, set privateKeyPath")


def host_key(value: str) -> None:
    """A public host key as `ssh-keyscan` prints it, without the host: "<type> <base64> [comment]"."""
    hint = f'expected "<type> <base64>" like "ssh-ed25519 AAAAC3Nz…", with type one of {", ".join(HOST_KEY_TYPES)}'
    words = value.split()
    if len(words) < 2:
        raise InvalidValue(f"{show(value)} is not a host key; {hint}")
    key_type, blob = words[0], words[1]
    if key_type not in HOST_KEY_TYPES:
        raise InvalidValue(f"{show(key_type)} is not a known host key type; {hint}")
    try:
        raw = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidValue(f"the key after {key_type} is not valid base64; {hint}") from None
    # The blob starts with its own type name (uint32 length + name), which catches a pasted key of another type.
    length = int.from_bytes(raw[:4], "big")
    if raw[4:4 + length] != key_type.encode():
        raise InvalidValue(f"the key after {key_type} is not a {key_type} key; {hint}")


def normalised_host_key(value: str) -> str:
    return " ".join(value.split()[:2])


def absolute_path(path: str) -> None:
    if not _ABS_PATH.fullmatch(path) or "/../" in f"{path}/":
        raise InvalidValue(
            f"{show(path)} is not an absolute path of letters, digits and . _ + @ = - /; expected e.g. /data/log_path")


def container_prefix(prefix: str) -> None:
    if not _CONTAINER_PREFIX.fullmatch(prefix):
        raise InvalidValue(
            f"{show(prefix)} is not a valid container name prefix; expected up to 64 letters, digits, '_', '.' "
            "or '-', starting with a letter or digit, like you_name_omni_infer_prefill")


def served_name(name: str) -> None:
    if not _SERVED_NAME.fullmatch(name):
        raise InvalidValue(
            f"{show(name)} is not a valid served model name; expected letters, digits, '.', '_', ':', '/' or '-', "
            "like deepseek")
