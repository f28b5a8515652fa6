#!/usr/bin/env bash
# Builds (once) goccy's bigquery-emulator, the GoogleSQL engine of the `googlesql` test tier, from the Go module
# proxy and prints the path of the binary as the LAST line of stdout; everything else goes to stderr. Usage:
#
#   CDI_BIGQUERY_EMULATOR=$(bash hack/bigquery-emulator/build.sh | tail -1)
#
# The binary goes to ${XDG_CACHE_HOME:-~/.cache}/cdi-operator/bigquery-emulator/<version>/; a second run finds the
# stamp file there and builds nothing. A cold build takes about 10 minutes on 2 cores and up to 6 GB of memory
# (the GoogleSQL analyzer is a large generated Go package), so CI runs it early and in the background.
#
# Environment: CDI_BIGQUERY_EMULATOR_CACHE (cache root), CDI_BIGQUERY_EMULATOR_FORCE=1 (rebuild), GOFLAGS.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[bigquery-emulator] %s\n' "$*" >&2; }

module=github.com/goccy/bigquery-emulator
version=$(awk -v m="$module" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$here/go.mod")
cache_root=${CDI_BIGQUERY_EMULATOR_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cdi-operator/bigquery-emulator}
out="$cache_root/$version"

mkdir -p "$cache_root"
# Two concurrent runs (CI's background build and a developer's shell) would otherwise build it twice.
exec 9>"$cache_root/.lock"
if command -v flock >/dev/null; then
  flock 9
fi

if [[ -f "$out/.complete" && -x "$out/bigquery-emulator" && -z ${CDI_BIGQUERY_EMULATOR_FORCE:-} ]]; then
  log "reusing $out"
  echo "$out/bigquery-emulator"
  exit 0
fi

command -v go >/dev/null || { log "go is required to build the BigQuery emulator"; exit 1; }
export CGO_ENABLED=0 GOTOOLCHAIN=local
export GOFLAGS="-mod=mod -trimpath ${GOFLAGS:-}"
start=$(date +%s)
tmp="$out.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp"
trap 'rm -rf "$tmp"' EXIT
log "building $module $version into $out"
(cd "$here" && go build -ldflags "-s -w -X main.version=$version" -o "$tmp/bigquery-emulator" \
  "$module/cmd/bigquery-emulator")
log "$("$tmp/bigquery-emulator" --version 2>&1 | head -1 || true)"
rm -rf "$out"
mv "$tmp" "$out"
trap - EXIT
echo "built in $(($(date +%s) - start))s with $(go version)" >"$out/.complete"
log "done in $(($(date +%s) - start))s: $out"
echo "$out/bigquery-emulator"
