"""Pin an image tag to the digest its registry serves now, so that a re-pushed tag shows in the preview.

Runs in the Pulumi program (preview and up) from the deploying machine. If the registry cannot be
asked (no network path, authentication, an image only `docker load`ed on the hosts), the tag is used as
is and the caller warns: a re-pushed tag is then not noticed.
"""
from __future__ import annotations

from dataclasses import dataclass

import requests

_ACCEPT = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])


@dataclass(frozen=True)
class ImageRef:
    registry: str  # "" for Docker Hub
    repository: str
    tag: str | None
    digest: str | None

    @classmethod
    def parse(cls, ref: str) -> "ImageRef":
        rest, _, digest = ref.partition("@")
        first, slash, remainder = rest.partition("/")
        if slash and ("." in first or ":" in first or first == "localhost"):
            registry, path = first, remainder
        else:
            registry, path = "", rest
        name, colon, tag = path.rpartition(":")
        if not colon:
            name, tag = path, ""
        return cls(registry, name, tag or None, digest or None)

    def name(self) -> str:
        return f"{self.registry}/{self.repository}" if self.registry else self.repository

    def pinned(self, digest: str) -> str:
        return f"{self.name()}@{digest}"


def resolve(ref: str, timeout: float = 5.0) -> tuple[str, str | None]:
    """(reference to deploy, problem). Digest-pinned when the registry answered, else `ref` and why not."""
    image = ImageRef.parse(ref)
    if image.digest:
        return ref, None
    if not image.registry:
        return ref, "images from Docker Hub are deployed by tag (no digest lookup)"
    tag = image.tag or "latest"
    problems = []
    session = requests.Session()
    session.trust_env = False  # registries are reached directly, never through a proxy
    for scheme in ("https", "http"):
        url = f"{scheme}://{image.registry}/v2/{image.repository}/manifests/{tag}"
        try:
            resp = session.head(url, headers={"Accept": _ACCEPT}, timeout=timeout, verify=True)
        except requests.RequestException as e:
            problems.append(f"{scheme}: {type(e).__name__}")
            continue
        digest = resp.headers.get("Docker-Content-Digest")
        if resp.status_code == 200 and digest:
            return image.pinned(digest), None
        problems.append(f"{scheme}: HTTP {resp.status_code}")
    return ref, f"could not ask {image.registry} for the digest of {ref} ({'; '.join(problems)})"
