#!/usr/bin/env bash
# Builds (once) the binaries of the e2e test control plane from Go modules and prints the directory that holds
# them as the LAST line of stdout; everything else goes to stderr. Usage in CI:
#
#   KUBEBUILDER_ASSETS=$(bash hack/controlplane/build.sh | tail -1)
#
# Produces kube-apiserver, kube-controller-manager, etcd (module hack/controlplane) and helm (module
# hack/controlplane/helm) into ${XDG_CACHE_HOME:-~/.cache}/cdi-operator/controlplane/<k8s>-<etcd>-<helm>/.
# A second run finds the stamp file there and builds nothing.
#
# If $KUBEBUILDER_ASSETS already holds kube-apiserver, kube-controller-manager and etcd (envtest's layout), those
# win and nothing of the control plane is built; helm is then taken from there, from PATH, or built, and a small
# directory of symlinks joining both is printed.
#
# `build.sh node` builds the node instead (kubelet, kube-proxy, kube-scheduler, pause; see below).
#
# Environment: CDI_CONTROLPLANE_CACHE (cache root), CDI_CONTROLPLANE_FORCE=1 (rebuild), GOFLAGS (extra flags).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[controlplane] %s\n' "$*" >&2; }

mod_version() { # the version of module $2 required in go.mod $1
  awk -v m="$2" '$1 == m && $2 ~ /^v/ { print $2; exit }' "$1"
}

k8s_version=$(mod_version "$here/go.mod" k8s.io/kubernetes)
etcd_version=$(mod_version "$here/go.mod" go.etcd.io/etcd/server/v3)
helm_version=$(mod_version "$here/helm/go.mod" helm.sh/helm/v3)
k8s_major=${k8s_version#v}; k8s_major=${k8s_major%%.*}
k8s_minor=${k8s_version#v*.}; k8s_minor=${k8s_minor%%.*}

cache_root=${CDI_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cdi-operator/controlplane}
out="$cache_root/$k8s_version-$etcd_version-$helm_version"
control_plane=(kube-apiserver kube-controller-manager etcd)

has_all() { # dir name...
  local dir=$1; shift
  local b
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

export CGO_ENABLED=0 GOTOOLCHAIN=local
export GOFLAGS="-mod=mod -trimpath ${GOFLAGS:-}"

module_commit() { # module@version -> upstream commit, when the proxy reports it
  (cd "$here" && go mod download -json "$1" 2>/dev/null) | awk -F'"' '$2 == "Hash" { print $4; exit }'
}

build_date=$(date -u +%Y-%m-%dT%H:%M:%SZ)

k8s_ldflags() { # the -ldflags of every k8s.io/kubernetes binary
  local commit
  commit=$(module_commit "k8s.io/kubernetes@$k8s_version")
  # -X for symbols a binary does not contain is ignored by the linker.
  local ldflags=(
    -s -w
    -X "k8s.io/component-base/version.gitVersion=$k8s_version"
    -X "k8s.io/component-base/version.gitMajor=$k8s_major"
    -X "k8s.io/component-base/version.gitMinor=$k8s_minor"
    -X "k8s.io/component-base/version.gitTreeState=clean"
    -X "k8s.io/component-base/version.buildDate=$build_date"
    -X "k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
    -X "k8s.io/client-go/pkg/version.gitMajor=$k8s_major"
    -X "k8s.io/client-go/pkg/version.gitMinor=$k8s_minor"
    -X "go.etcd.io/etcd/api/v3/version.GitSHA=$etcd_version"
  )
  if [[ -n $commit ]]; then
    ldflags+=(-X "k8s.io/component-base/version.gitCommit=$commit")
  fi
  echo "${ldflags[*]}"
}

build_control_plane() { # dest
  local dest=$1
  log "building kube-apiserver, kube-controller-manager ($k8s_version) and etcd ($etcd_version) into $dest"
  # One go invocation for the three binaries: they share most packages and the compile work is done once.
  (cd "$here" && go build -tags selinux,notest -ldflags "$(k8s_ldflags)" -o "$dest/" \
    k8s.io/kubernetes/cmd/kube-apiserver \
    k8s.io/kubernetes/cmd/kube-controller-manager \
    go.etcd.io/etcd/server/v3)
  # etcd's main package is the module root go.etcd.io/etcd/server/v3, which go build names "server".
  mv "$dest/server" "$dest/etcd"
}

build_helm() { # dest
  local dest=$1
  local ldflags=(
    -s -w
    -X "helm.sh/helm/v3/internal/version.version=$helm_version"
    -X "helm.sh/helm/v3/internal/version.gitTreeState=clean"
    -X "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$k8s_major"
    -X "helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$k8s_minor"
    -X "helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$k8s_major"
    -X "helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$k8s_minor"
  )
  log "building helm ($helm_version) into $dest"
  (cd "$here/helm" && go build -ldflags "${ldflags[*]}" -o "$dest/helm" helm.sh/helm/v3/cmd/helm)
}

mkdir -p "$cache_root"
# Two concurrent runs (CI and a developer's shell) would otherwise build the same thing twice.
exec 9>"$cache_root/.lock"
if command -v flock >/dev/null; then
  flock 9
fi

build_node() { # dest
  log "building kubelet, kube-proxy, kube-scheduler, kubectl ($k8s_version) and pause into $1"
  (cd "$here" && go build -tags selinux,notest -ldflags "$(k8s_ldflags)" -o "$1/" \
    k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy k8s.io/kubernetes/cmd/kube-scheduler \
    k8s.io/kubernetes/cmd/kubectl ./pause)
}

build_all() { # dest: the control plane and helm
  build_control_plane "$1"
  build_helm "$1"
  local b
  for b in "${control_plane[@]}" helm; do
    log "$b: $("$1/$b" --version 2>/dev/null | head -1 || "$1/$b" version --short 2>/dev/null)"
  done
}

build_once() { # dest builder binary...: `builder TMP` into dest, once (a stamp file marks it complete); prints dest
  local dest=$1 builder=$2
  shift 2
  if [[ -f "$dest/.complete" && -z ${CDI_CONTROLPLANE_FORCE:-} ]] && has_all "$dest" "$@"; then
    log "reusing $dest"
    echo "$dest"
    return 0
  fi
  command -v go >/dev/null || { log "go is required to build $*"; exit 1; }
  local began
  began=$(date +%s)
  building="$dest.tmp.$$"
  rm -rf "$building"
  mkdir -p "$building"
  trap 'rm -rf "$building"' EXIT
  "$builder" "$building"
  rm -rf "$dest"
  mv "$building" "$dest"
  trap - EXIT
  echo "built in $(($(date +%s) - began))s with $(go version)" >"$dest/.complete"
  log "done in $(($(date +%s) - began))s: $dest"
  echo "$dest"
}

# `build.sh node`: kubelet, kube-proxy, kube-scheduler, kubectl (the same module, tags and ldflags, so the compile
# work of the packages they share with the control plane is reused from Go's build cache) and a static pause binary
# for the sandbox image (pause/), for hack/node.sh, into $cache_root/node-<k8s>/.
if [[ ${1:-} == node ]]; then
  build_once "$cache_root/node-$k8s_version" build_node kubelet kube-proxy kube-scheduler kubectl pause
  exit 0
fi

if [[ -n ${KUBEBUILDER_ASSETS:-} ]] && has_all "$KUBEBUILDER_ASSETS" "${control_plane[@]}"; then
  assets=$(cd "$KUBEBUILDER_ASSETS" && pwd)
  log "using kube-apiserver, kube-controller-manager and etcd from KUBEBUILDER_ASSETS=$assets"
  if [[ -x "$assets/helm" ]]; then
    echo "$assets"
    exit 0
  fi
  helm_path=$(command -v helm || true)
  if [[ -z $helm_path ]]; then
    helm_dir="$cache_root/helm-$helm_version"
    if [[ ! -x "$helm_dir/helm" || -n ${CDI_CONTROLPLANE_FORCE:-} ]]; then
      mkdir -p "$helm_dir"
      build_helm "$helm_dir"
    fi
    helm_path="$helm_dir/helm"
  fi
  linked="$cache_root/assets-$(printf '%s' "$assets" | sha256sum | cut -c1-12)"
  mkdir -p "$linked"
  for b in "${control_plane[@]}"; do ln -sfn "$assets/$b" "$linked/$b"; done
  ln -sfn "$helm_path" "$linked/helm"
  log "joined them with helm ($helm_path) in $linked"
  echo "$linked"
  exit 0
fi

build_once "$out" build_all "${control_plane[@]}" helm
