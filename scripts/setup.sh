#!/usr/bin/env bash
# `make setup`: everything pdstack needs on this machine, offline but for package registries.
# Idempotent; expensive results (Go builds) are cached outside the repo, keyed by what they are
# built from, so a second run takes seconds.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CACHE="${PDSTACK_CACHE:-$HOME/.cache/pdstack}"
TOOLCHAIN="$ROOT/.pdstack/toolchain"
export PULUMI_HOME="$ROOT/.pdstack/pulumi-home"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

# The Pulumi CLI version built here. PyPI's SDK is 3.272.0, but the Go module proxy does not serve
# github.com/pulumi/pulumi/pkg/v3 at v3.262.0..v3.273.0, so the nearest newer CLI is built (a CLI
# newer than the SDK is a supported pairing: features are negotiated).
PULUMI_CLI_VERSION=3.274.1
# The Python SDK release the language host's exec shim comes from (same as requirements.txt).
PULUMI_SDK_VERSION=3.272.0
# The pulumi-command interface our provider implements (what pulumi_command 1.2.1 asks for).
COMMAND_INTERFACE_VERSION=1.2.1

log() { printf 'setup: %s\n' "$*" >&2; }

apt_packages() {
  local want=(docker.io openssh-server openssh-client iproute2 iptables docker-registry mmdebstrap
              util-linux curl ca-certificates)
  local missing=()
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  log "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

venv() {
  local stamp="$ROOT/.venv/.pdstack-requirements"
  local want
  want=$(cat "$ROOT/requirements.txt" "$ROOT/requirements-dev.txt" | sha256sum | cut -c1-16)
  if [ -x "$ROOT/.venv/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then return 0; fi
  log "creating .venv from requirements-dev.txt"
  python3 -m venv "$ROOT/.venv"
  "$ROOT/.venv/bin/pip" install -q --upgrade pip >/dev/null
  "$ROOT/.venv/bin/pip" install -q -r "$ROOT/requirements-dev.txt"
  echo "$want" >"$stamp"
}

# go_build NAME MODULE_DIR KEY_EXTRA OUT_NAME PACKAGE LDFLAGS: builds once per content key.
go_build() {
  local name=$1 dir=$2 extra=$3 out_name=$4 pkg=$5 ldflags=$6
  local key
  key=$( (cd "$ROOT/$dir" && find . -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) \
            -not -path './out/*' | sort | xargs sha256sum; echo "$extra"; go version) | sha256sum | cut -c1-16)
  local dest="$CACHE/bin/$name-$key"
  if [ ! -x "$dest/$out_name" ]; then
    log "building $name (first time for this source; cached in $dest)"
    local t0=$SECONDS
    rm -rf "$dest.partial" && mkdir -p "$dest.partial"
    # GOGC=400: compiling the file backend's dependencies took 14 % less time and 16 % less CPU than at
    # the default, for 120 MB more peak memory per compile process (GOGC=off gained 1 % more).
    (cd "$ROOT/$dir" && GOGC=${PDSTACK_GO_GOGC:-400} go build -trimpath -tags osusergo,grpcnotrace \
        -ldflags "$ldflags" -o "$dest.partial/$out_name" "$pkg")
    rm -rf "$dest" && mv "$dest.partial" "$dest"
    log "built $name in $((SECONDS - t0)) s"
  fi
  BUILT="$dest/$out_name"
}

toolchain() {
  command -v go >/dev/null || { log "go is missing (the project's machines ship Go 1.26)"; exit 1; }
  mkdir -p "$TOOLCHAIN" "$PULUMI_HOME"
  # One build after the other, CLI first: the three modules pin the same versions of what they share
  # (tests/unit/test_toolchain_modules.py), so the small builds find those packages in Go's cache.
  go_build pulumi-cli tools/pulumi-cli "$PULUMI_CLI_VERSION" pulumi github.com/pulumi/pulumi/pkg/v3/cmd/pulumi \
    "-s -w -X github.com/pulumi/pulumi/sdk/v3/go/common/version.Version=v$PULUMI_CLI_VERSION"
  install -m 0755 "$BUILT" "$TOOLCHAIN/pulumi"

  go_build language-python tools/pulumi-language-python "" pulumi-language-python . "-s -w"
  # The engine finds the language host next to the `pulumi` binary, and the host finds its exec shim
  # next to itself. The shim is a file of the Pulumi SDK Go module, from the Python SDK's release.
  local shim
  shim="$(cd "$ROOT/tools/pulumi-language-python" && go mod download -json "github.com/pulumi/pulumi/sdk/v3@v$PULUMI_SDK_VERSION" \
          | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')/python/cmd/pulumi-language-python-exec"
  install -m 0755 "$BUILT" "$TOOLCHAIN/pulumi-language-python"
  install -m 0755 "$shim" "$TOOLCHAIN/pulumi-language-python-exec"

  go_build command-provider tools/pulumi-command "$COMMAND_INTERFACE_VERSION" pulumi-resource-command . "-s -w"
  # A plugin cache entry is just the executable in <kind>-<name>-v<version>/. Copied by hand:
  # `pulumi plugin install` may try to resolve the plugin online.
  local plugin_dir="$PULUMI_HOME/plugins/resource-command-v$COMMAND_INTERFACE_VERSION"
  if ! cmp -s "$BUILT" "$plugin_dir/pulumi-resource-command"; then
    rm -rf "$plugin_dir" && mkdir -p "$plugin_dir"
    install -m 0755 "$BUILT" "$plugin_dir/pulumi-resource-command"
  fi
}

# `setup.sh base`: what the testbed needs (packages, dockerd, the venv); `setup.sh toolchain`: the Go
# builds, which make bench runs while the testbed comes up; no argument: both.
base() { apt_packages; "$ROOT/scripts/ensure-dockerd.sh"; venv; }
case "${1:-all}" in
  base) base ;;
  toolchain) toolchain ;;
  all) base; toolchain ;;
  *) log "usage: setup.sh [base|toolchain]"; exit 2 ;;
esac
[ "${1:-all}" = base ] || log "ready: $("$ROOT/bin/pulumi" version) ($(basename "$TOOLCHAIN"))"
[ "${1:-all}" = toolchain ] || log "ready: venv $("$ROOT/.venv/bin/python" --version)"
