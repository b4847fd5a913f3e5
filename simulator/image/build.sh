#!/bin/bash
# Build the pdstack simulator image: simulator/image/build.sh OUT_TAG
#
# No outside image is pulled. A Debian bookworm root filesystem is made with mmdebstrap from
# the Debian mirror apt already uses on this machine, cached as a tarball under
# ${PDSTACK_CACHE:-$HOME/.cache/pdstack}/rootfs/, imported with `docker import` as the base
# image, and the simulator is added on top with `docker build`.
set -euo pipefail

OUT_TAG="${1:?usage: $0 OUT_TAG}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SIM_DIR="$(dirname "$HERE")"
CACHE="${PDSTACK_CACHE:-$HOME/.cache/pdstack}/rootfs"
SUITE=bookworm
VARIANT=apt
INCLUDE=python3,bash,procps,iproute2,curl,ca-certificates

# The first mirror apt is configured with for $SUITE itself (not -security/-updates), from
# one-line sources.list entries or deb822 .sources stanzas.
find_mirror() {
    python3 - "$SUITE" /etc/apt/sources.list /etc/apt/sources.list.d/* <<'PY'
import sys
suite, files = sys.argv[1], sys.argv[2:]
for path in files:
    try:
        text = open(path).read()
    except OSError:
        continue
    if path.endswith(".list"):
        for line in text.splitlines():
            parts = line.split("#", 1)[0].split()
            if parts[:1] != ["deb"]:
                continue
            parts = [p for p in parts[1:] if not p.startswith("[") and not p.endswith("]")]
            if len(parts) >= 2 and parts[1] == suite:
                print(parts[0]); sys.exit(0)
    elif path.endswith(".sources"):
        for stanza in text.split("\n\n"):
            fields = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                k, v = line.split(":", 1)
                fields[k.strip().lower()] = v.split()
            if ("deb" in fields.get("types", []) and suite in fields.get("suites", [])
                    and fields.get("enabled", ["yes"])[0] != "no" and fields.get("uris")):
                print(fields["uris"][0]); sys.exit(0)
sys.exit("no apt source for suite " + suite + " in " + " ".join(files))
PY
}

MIRROR="$(find_mirror)"
KEY="$(printf '%s\n' "$SUITE" "$VARIANT" "$INCLUDE" "$MIRROR" | sha256sum | cut -c1-12)"
ROOTFS="$CACHE/$SUITE-$KEY.tar"
BASE_TAG="pdstack-sim-base:$SUITE-$KEY"

start=$(date +%s)
if [ ! -s "$ROOTFS" ]; then
    mkdir -p "$CACHE"
    echo "build.sh: making $SUITE root filesystem from $MIRROR (cached as $ROOTFS)"
    # mmdebstrap picks the output format from the name, so the temporary name ends in .tar.
    tmp="$CACHE/.partial-$$-$SUITE-$KEY.tar"
    trap 'rm -rf "$tmp"' EXIT
    mmdebstrap --quiet --variant="$VARIANT" --include="$INCLUDE" "$SUITE" "$tmp" "$MIRROR"
    mv "$tmp" "$ROOTFS"
    trap - EXIT
else
    echo "build.sh: using cached root filesystem $ROOTFS"
fi

if ! docker image inspect "$BASE_TAG" >/dev/null 2>&1; then
    echo "build.sh: importing $ROOTFS as $BASE_TAG"
    docker import -m "pdstack simulator base: mmdebstrap $SUITE ($INCLUDE) from $MIRROR" \
        "$ROOTFS" "$BASE_TAG" >/dev/null
fi

CTX="$(mktemp -d)"
trap 'rm -rf "$CTX"' EXIT
mkdir -p "$CTX/simulator" "$CTX/bin"
cp "$SIM_DIR"/*.py "$CTX/simulator/"
cp "$HERE/bin/vllm" "$HERE/bin/ray" "$CTX/bin/"
cp "$HERE/global_proxy.sh" "$HERE/Dockerfile" "$CTX/"
VERSION="$(python3 -c 'import sys; sys.path.insert(0, sys.argv[1]); import simulator; print(simulator.VERSION)' "$(dirname "$SIM_DIR")")"

echo "build.sh: building $OUT_TAG from $BASE_TAG"
# The classic builder resolves FROM against local images only; it never contacts a registry
# for an image that is present.
DOCKER_BUILDKIT=0 docker build --quiet -t "$OUT_TAG" \
    --build-arg "BASE_IMAGE=$BASE_TAG" --build-arg "SIM_VERSION=$VERSION" "$CTX" >/dev/null
echo "build.sh: built $OUT_TAG (pdstack-simulator $VERSION) in $(( $(date +%s) - start ))s"
