#!/usr/bin/env bash
# Builds the project's image from the Dockerfile and saves it as an archive (what `ctr images import` and
# `kind load image-archive` take); prints the archive's path as the LAST line of stdout, everything else on stderr.
#
#   archive=$(bash hack/image.sh | tail -1)
#
# The base: the Dockerfile's pinned python:3.11-slim-bookworm when the Docker engine already has it or
# CDI_IMAGE_BASE=upstream (plain `docker build .`, where Docker Hub is reachable); otherwise (CDI_IMAGE_BASE=debian,
# the default on a machine without that image) a stand-in made without any registry: `debootstrap --variant=minbase`
# of Debian bookworm from the mirror this machine's own apt sources name, with Debian's python3 (3.11) and
# python3-venv, /usr/local/bin/python3.11 linked as in the upstream image, and this machine's CA bundle, so that pip
# in the build trusts what the host trusts. It is kept in the engine as $CDI_IMAGE_BASE_TAG.
#
# The engine: the one `docker` reaches ($DOCKER_HOST or the default socket); when there is none, a private dockerd
# for the length of the build (--iptables=false --ip-forward=false --bridge=none, its socket under /run, its data
# root ${XDG_CACHE_HOME:-~/.cache}/cdi-operator/docker so layers are reused), stopped on exit. Build steps use the
# host's network (to reach PyPI); no container of the build is given an address of its own.
#
# Environment: CDI_IMAGE (default cdi-operator:dev), CDI_IMAGE_BASE (upstream|debian), CDI_DEBIAN_MIRROR (instead of
# the apt sources' one), CDI_IMAGE_CACHE (cache root).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
log() { printf '[image] %s\n' "$*" >&2; }

image=${CDI_IMAGE:-cdi-operator:dev}
suite=bookworm
base_tag=${CDI_IMAGE_BASE_TAG:-cdi-operator-base:python3.11-$suite}
upstream_base=$(awk -F= '$1 == "ARG BASE_IMAGE" { print $2; exit }' "$repo/Dockerfile")
cache_root=${CDI_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cdi-operator}
archive="$cache_root/image/${image//[:\/]/_}.tar"
mkdir -p "$cache_root/image"

# One build at a time per cache (the private engine's data root is shared).
exec 9>"$cache_root/image/.lock"
command -v flock >/dev/null && flock 9

run_dir=""
stop_dockerd() {
  [[ -n $run_dir && -f $run_dir/dockerd.pid ]] || return 0
  local pid
  pid=$(cat "$run_dir/dockerd.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
  # dockerd leaves a bind mount of the host's network namespace in its exec root.
  awk -v d="$run_dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | xargs -r umount -l
  rm -rf "$run_dir"
}
trap stop_dockerd EXIT

if ! docker info >/dev/null 2>&1; then
  command -v dockerd >/dev/null || { log "no Docker engine: install docker.io (Debian) or start dockerd"; exit 1; }
  run_dir=$(mktemp -d /run/cdi-dockerd.XXXXXX)
  log "starting a private dockerd (socket $run_dir/docker.sock, data root $cache_root/docker)"
  dockerd --host "unix://$run_dir/docker.sock" --data-root "$cache_root/docker" --exec-root "$run_dir/exec" \
    --pidfile "$run_dir/dockerd.pid" --iptables=false --ip6tables=false --ip-forward=false --ip-masq=false \
    --bridge=none --log-level=warn >"$run_dir/dockerd.log" 2>&1 &
  export DOCKER_HOST="unix://$run_dir/docker.sock"
  for _ in $(seq 150); do docker info >/dev/null 2>&1 && break; sleep 0.2; done
  docker info >/dev/null 2>&1 || { cat "$run_dir/dockerd.log" >&2; log "dockerd did not start"; exit 1; }
fi

debian_mirror() { # the first mirror the apt sources give for Debian's main archive
  if [[ -n ${CDI_DEBIAN_MIRROR:-} ]]; then
    echo "$CDI_DEBIAN_MIRROR"
    return
  fi
  apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT) $(CREATED_BY)' 2>/dev/null |
    awk '$3 == "main" && $4 == "Packages" && $2 !~ /-(security|updates|backports)$/ { print $1; exit }'
}

build_debian_base() {
  command -v debootstrap >/dev/null || { log "debootstrap is required (Debian package debootstrap)"; exit 1; }
  local mirror root start
  mirror=$(debian_mirror)
  [[ -n $mirror ]] || { log "no Debian mirror in the apt sources: set CDI_DEBIAN_MIRROR"; exit 1; }
  start=$(date +%s)
  root=$(mktemp -d "$cache_root/image/rootfs.XXXXXX")
  trap 'rm -rf "$root"; stop_dockerd' EXIT
  log "debootstrap $suite from $mirror (python3, python3-venv, ca-certificates)"
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$suite" "$root" "$mirror" \
    >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
  rm -f "$root.log"
  for name in python python3 python3.11; do ln -sfn /usr/bin/python3.11 "$root/usr/local/bin/$name"; done
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/usr/share/doc/*
  tar -C "$root" --numeric-owner -c . | docker import \
    --change 'ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' - "$base_tag" >/dev/null
  rm -rf "$root"
  trap stop_dockerd EXIT
  log "base $base_tag made in $(($(date +%s) - start))s"
}

case ${CDI_IMAGE_BASE:-} in
  upstream) base=$upstream_base ;;
  debian) base=$base_tag ;;
  "") if docker image inspect "$upstream_base" >/dev/null 2>&1; then base=$upstream_base; else base=$base_tag; fi ;;
  *) log "CDI_IMAGE_BASE must be upstream or debian, not ${CDI_IMAGE_BASE}"; exit 2 ;;
esac
if [[ $base == "$base_tag" ]] && ! docker image inspect "$base_tag" >/dev/null 2>&1; then
  build_debian_base
fi

start=$(date +%s)
log "building $image on $base"
DOCKER_BUILDKIT=0 docker build --network host --build-arg "BASE_IMAGE=$base" -t "$image" "$repo" >&2
docker save -o "$archive.tmp" "$image"
mv "$archive.tmp" "$archive"
log "built in $(($(date +%s) - start))s: $image, $(docker image inspect -f '{{.Size}}' "$image" | numfmt --to=iec) ($archive)"
echo "$archive"
