"""Pin an image tag to the digest its registry serves now, so that a re-pushed tag shows in the preview.

Runs in the Pulumi program (preview and up) from the deploying machine. If the registry cannot be
asked (no network path, authentication, an image only `docker load`ed on the hosts), the tag is used as
is and the caller warns: a re-pushed tag is then not noticed.
"""
from __future__ import annotations

import requests

from .config.image_ref import split

_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


class ImageNotInRegistry(Exception):
    """The registry answered, and it does not have this tag: every host's pull would fail the same way."""


def resolve(ref: str, timeout: float = 5.0) -> tuple[str, str | None]:
    """(reference to deploy, problem). Digest-pinned when the registry answered, else `ref` and why not."""
    registry, repository, tag, digest = split(ref)
    if digest:
        return ref, None
    if not registry:
        return ref, "images from Docker Hub are deployed by tag (no digest lookup)"
    tag = tag or "latest"
    problems = []
    missing = False
    session = requests.Session()
    session.trust_env = False  # registries are reached directly, never through a proxy
    for scheme in ("https", "http"):
        url = f"{scheme}://{registry}/v2/{repository}/manifests/{tag}"
        try:
            resp = session.head(url, headers={"Accept": _ACCEPT}, timeout=timeout, verify=True)
        except requests.RequestException as e:
            problems.append(f"{scheme}: {type(e).__name__}")
            continue
        served = resp.headers.get("Docker-Content-Digest")
        if resp.status_code == 200 and served:
            return f"{registry}/{repository}@{served}", None
        problems.append(f"{scheme}: HTTP {resp.status_code}")
        missing |= resp.status_code == 404
    if missing:
        raise ImageNotInRegistry(f"{registry} has no {repository}:{tag} (HTTP 404): push the image, or fix the "
                                 "tag in pdstack:image")
    return ref, f"could not ask {registry} for the digest of {ref} ({'; '.join(problems)})"
