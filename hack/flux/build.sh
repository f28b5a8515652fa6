#!/usr/bin/env bash
# Builds (once) Flux's own controllers from the Go module proxy and prints the directory that holds them as the
# LAST line of stdout; everything else goes to stderr. Usage in CI:
#
#   CDI_FLUX_ASSETS=$(bash hack/flux/build.sh | tail -1)
#
# Produces source-controller, kustomize-controller and helm-controller, plus their CRDs under crds/, into
# ${XDG_CACHE_HOME:-~/.cache}/cdi-operator/flux/<source>-<kustomize>-<helm>/. A second run finds the stamp file
# there and builds nothing. Module and build caches are Go's defaults, shared with hack/controlplane/build.sh.
#
# Environment: CDI_FLUX_CACHE (cache root), CDI_FLUX_FORCE=1 (rebuild), GOFLAGS (extra flags).
set -euo pipefail

log() { printf '[flux] %s\n' "$*" >&2; }

# The Flux 2.7 line: on client-go 0.34 like the control plane. The proxy refuses some other versions.
controllers=(
  source-controller@v1.7.3
  kustomize-controller@v1.7.3
  helm-controller@v1.4.3
)

cache_root=${CDI_FLUX_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cdi-operator/flux}
key=$(printf '%s\n' "${controllers[@]#*@}" | paste -sd-)
out="$cache_root/$key"

complete() { # dir
  [[ -f "$1/.complete" ]] || return 1
  local c
  for c in "${controllers[@]}"; do [[ -x "$1/${c%@*}" ]] || return 1; done
}

mkdir -p "$cache_root"
# Two concurrent runs (CI and a developer's shell) would otherwise build the same thing twice.
exec 9>"$cache_root/.lock"
if command -v flock >/dev/null; then
  flock 9
fi

if complete "$out" && [[ -z ${CDI_FLUX_FORCE:-} ]]; then
  log "reusing $out"
  echo "$out"
  exit 0
fi

command -v go >/dev/null || { log "go is required to build Flux's controllers"; exit 1; }
export CGO_ENABLED=0 GOTOOLCHAIN=local
export GOFLAGS="-mod=mod -trimpath ${GOFLAGS:-}"

start=$(date +%s)
tmp="$out.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/crds" "$tmp/src"
trap 'chmod -R u+w "$tmp" 2>/dev/null; rm -rf "$tmp"' EXIT

for c in "${controllers[@]}"; do
  name=${c%@*}
  module=github.com/fluxcd/$name
  dir=$(cd "$tmp/src" && go mod download -json "$module@${c#*@}" | awk -F'"' '$2 == "Dir" { print $4; exit }')
  [[ -n $dir ]] || { log "could not download $module@${c#*@}"; exit 1; }
  # Each go.mod replaces its api submodule with ./api, which the module zip lacks: build a writable copy that
  # takes the api module of the same release from the proxy instead.
  cp -r "$dir" "$tmp/src/$name"
  chmod -R u+w "$tmp/src/$name"
  (cd "$tmp/src/$name" && go mod edit -dropreplace "$module/api")
  log "building $c"
  began=$(date +%s)
  (cd "$tmp/src/$name" && go build -ldflags "-s -w" -o "$tmp/$name" .)
  log "built $c in $(($(date +%s) - began))s"
  cp "$dir"/config/crd/bases/*.yaml "$tmp/crds/"
done
chmod 0644 "$tmp/crds"/*.yaml
chmod -R u+w "$tmp/src"
rm -rf "$tmp/src"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "built in $(($(date +%s) - start))s with $(go version)" >"$out/.complete"
log "done in $(($(date +%s) - start))s: $out"
echo "$out"
