#!/usr/bin/env bash
# One real Kubernetes node on this machine for the e2e tests (CDI_E2E_NODE=containerd): containerd (Debian's
# package, with Debian's runc and CNI plugins), kubelet, kube-proxy and kube-scheduler (built by
# `hack/controlplane/build.sh node` from the control plane's own module), joined to a control plane whose
# apiserver listens on the node's bridge address (pods cannot reach the host's loopback).
#
#   bash hack/node.sh network DIR            # the bridges, routes and forwarding rules; prints NAME=value lines
#   bash hack/node.sh up DIR KUBECONFIG IMAGE_ARCHIVE...   # containerd, the images, kubelet, kube-proxy,
#                                                          # kube-scheduler; KUBECONFIG: an admin's, in JSON
#   bash hack/node.sh down DIR               # stops all of it and puts the host back as it was
#
# DIR holds every file, socket, log and record of what was changed; `down` works from that record, also after a
# failed `up` (which runs `down` itself). Only this machine is ever a target: pods live on the bridge
# $CDI_NODE_BRIDGE ($CDI_NODE_CIDR, the host is its first address), the Service range $CDI_NODE_SERVICE_CIDR is
# routed to an empty bridge so that no ClusterIP leaves the machine, and forwarding from either bridge to any other
# interface is refused. What the kubelet and kube-proxy change on the host (ip_forward, the kernel tunables the
# kubelet sets, their iptables chains, the kubelet's cgroups) is recorded first and put back by `down`.
# One node per machine at a time (the bridge's name is the lock; the bridge's alias names the DIR and the process
# that asked for it, so a node whose owner was killed without its `down`, say a CI run stopped mid-way, is taken
# down from its own record by the next `network`). Needs root.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
log() { printf '[node] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

bridge=${CDI_NODE_BRIDGE:-cdi-node0}
service_bridge=${CDI_NODE_SERVICE_BRIDGE:-cdi-svc0}
cidr=${CDI_NODE_CIDR:-10.213.0.0/24}
service_cidr=${CDI_NODE_SERVICE_CIDR:-10.0.0.0/24}
node_name=${CDI_NODE_NAME:-cdi-node}
prefix=${cidr#*/}
node_ip=${cidr%/*}
node_ip=${node_ip%.*}.$((${node_ip##*.} + 1))
kubelet_sysctls=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes)
tag=(-m comment --comment "cdi-operator hack/node.sh")

# --- network --------------------------------------------------------------------------------------------------------

started() { # pid: when that process started (clock ticks after boot), so that a reused pid is not taken for it
  [[ -r /proc/$1/stat ]] || return 1
  sed -E 's/^.*\) //' "/proc/$1/stat" | cut -d' ' -f20
}

stale_owner() { # the DIR of the node holding the bridge, if the process that asked for that node is gone
  local alias
  alias=$(cat "/sys/class/net/$bridge/ifalias" 2>/dev/null) || return 1
  [[ $alias =~ ^cdi-node\ dir=(/.*)\ owner=([0-9]+):([0-9]+)$ ]] || return 1
  [[ $(started "${BASH_REMATCH[2]}" 2>/dev/null) == "${BASH_REMATCH[3]}" ]] && return 1
  echo "${BASH_REMATCH[1]}"
}

network() { # dir
  local dir=$1 stale
  [[ $(id -u) == 0 ]] || die "needs root (bridges, routes, containerd)"
  mkdir -p "$dir"
  if ip link show "$bridge" >/dev/null 2>&1 && stale=$(stale_owner); then
    log "bridge $bridge is left from $stale, whose owner is gone: taking that node down first"
    bash "${BASH_SOURCE[0]}" down "$stale"
    ip link del "$service_bridge" 2>/dev/null || true  # also when $stale itself was removed meanwhile
    ip link del "$bridge" 2>/dev/null || true
  fi
  if ip link show "$bridge" >/dev/null 2>&1; then
    die "bridge $bridge exists: another node is up (hack/node.sh down DIR of that run, or ip link del $bridge)"
  fi
  sysctl -n net.ipv4.ip_forward >"$dir/ip_forward"
  for s in "${kubelet_sysctls[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$dir/sysctls"
  echo "$bridge" >"$dir/bridge"
  ip link add "$bridge" type bridge
  local owner=${CDI_NODE_OWNER:-$PPID}  # by hand: the pid of a shell that stays while the node is used
  ip link set dev "$bridge" alias "cdi-node dir=$dir owner=$owner:$(started "$owner")"
  ip addr add "$node_ip/$prefix" dev "$bridge"
  ip link set "$bridge" up
  ip link add "$service_bridge" type bridge
  ip link set "$service_bridge" up
  ip route add "$service_cidr" dev "$service_bridge" src "$node_ip"
  # Pods talk to each other and to this host only: nothing is forwarded from the bridges to another interface.
  iptables -I FORWARD 1 -i "$bridge" ! -o "$bridge" "${tag[@]}" -j DROP
  iptables -I FORWARD 1 -i "$service_bridge" "${tag[@]}" -j DROP
  iptables -I FORWARD 1 -o "$service_bridge" "${tag[@]}" -j DROP
  echo "CDI_NODE_IP=$node_ip"
  echo "CDI_NODE_CIDR=$cidr"
  echo "CDI_NODE_SERVICE_CIDR=$service_cidr"
}

# --- processes ------------------------------------------------------------------------------------------------------

start() { # name log argv...: a process of ours, its pid recorded in $dir/pids
  local name=$1 logfile=$2
  shift 2
  setsid "$@" >"$logfile" 2>&1 </dev/null &
  echo "$name $!" >>"$dir/pids"
}

wait_for() { # what seconds command...
  local what=$1 seconds=$2
  shift 2
  for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "timed out after ${seconds}s waiting for $what (logs in $dir)"
}

pause_image() { # binary archive: a docker-archive holding only the static pause binary, made without a registry
  local binary=$1 archive=$2 work layer_sum config config_sum
  work=$(mktemp -d "$dir/pause.XXXXXX")
  mkdir "$work/root"
  cp "$binary" "$work/root/pause"
  tar -C "$work/root" --owner=0 --group=0 --numeric-owner -cf "$work/layer.tar" pause
  layer_sum=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
  config=$(printf '{"architecture":"%s","os":"linux","config":{"Entrypoint":["/pause"],"User":"65535:65535"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$(go env GOARCH 2>/dev/null || echo amd64)" "$layer_sum")
  config_sum=$(printf '%s' "$config" | sha256sum | cut -d' ' -f1)
  printf '%s' "$config" >"$work/$config_sum.json"
  printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["layer.tar"]}]' "$config_sum" "$pause_ref" \
    >"$work/manifest.json"
  tar -C "$work" -cf "$archive" manifest.json "$config_sum.json" layer.tar
  rm -rf "$work"
}

up() { # dir kubeconfig archive...
  local kubeconfig=$2
  shift 2
  [[ -f $dir/bridge ]] || die "run hack/node.sh network $dir first"
  trap '[[ -n ${up_done:-} ]] || { log "failed; stopping what was started"; down; }' EXIT
  local bin ca
  bin=$(bash "$here/controlplane/build.sh" node | tail -1)
  ca=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["clusters"][0]["cluster"]["certificate-authority"])' "$kubeconfig")
  [[ -f $ca ]] || die "no certificate-authority file in $kubeconfig"
  pause_ref=cdi.local/pause:node
  mkdir -p "$dir/containerd" "$dir/cni/net.d" "$dir/kubelet" "$dir/pod-logs"

  cat >"$dir/containerd/config.toml" <<EOF
version = 2
root = "$dir/containerd/root"
state = "$dir/containerd/state"
[grpc]
  address = "$dir/containerd.sock"
[ttrpc]
  address = "$dir/containerd-ttrpc.sock"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$pause_ref"
  # The capability bounding set of such VMs lacks CAP_SYS_RESOURCE: no lowering of oom_score_adj.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni/net.d"
[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/containerd/opt"
EOF
  cat >"$dir/cni/net.d/10-cdi.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "cdi-node",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$bridge",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$dir/cni/ipam",
        "ranges": [[{"subnet": "$cidr", "gateway": "$node_ip"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "loopback"}
  ]
}
EOF
  log "containerd ($(containerd --version | awk '{print $3}'))"
  start containerd "$dir/containerd.log" containerd --config "$dir/containerd/config.toml"
  wait_for containerd 30 ctr --address "$dir/containerd.sock" version
  pause_image "$bin/pause" "$dir/pause.tar"
  local archive
  for archive in "$dir/pause.tar" "$@"; do
    log "importing $(basename "$archive")"
    ctr --address "$dir/containerd.sock" -n k8s.io images import "$archive" >/dev/null
  done

  cat >"$dir/kubelet/config.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $node_ip
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 0
containerRuntimeEndpoint: unix://$dir/containerd.sock
cgroupDriver: cgroupfs
failSwapOn: false
failCgroupV1: false
podLogsDir: $dir/pod-logs
resolvConf: $dir/resolv.conf
registerNode: true
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $ca}
authorization: {mode: Webhook}
evictionHard: {memory.available: 100Mi, nodefs.available: 1%, imagefs.available: 1%}
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  : >"$dir/resolv.conf"
  log "kubelet"
  start kubelet "$dir/kubelet.log" "$bin/kubelet" --config="$dir/kubelet/config.yaml" --kubeconfig="$kubeconfig" \
    --root-dir="$dir/kubelet" --cert-dir="$dir/kubelet/pki" --hostname-override="$node_name" --node-ip="$node_ip" \
    --v=1
  wait_for "Node $node_name Ready" 90 node_ready "$kubeconfig"

  cat >"$dir/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $kubeconfig}
hostnameOverride: $node_name
mode: iptables
clusterCIDR: $cidr
bindAddress: $node_ip
healthzBindAddress: ""
metricsBindAddress: ""
nodePortAddresses: ["$node_ip/32"]
iptables: {localhostNodePorts: false}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  log "kube-proxy, kube-scheduler"
  start kube-proxy "$dir/kube-proxy.log" "$bin/kube-proxy" --config="$dir/kube-proxy.yaml" --v=1
  start kube-scheduler "$dir/kube-scheduler.log" "$bin/kube-scheduler" --kubeconfig="$kubeconfig" \
    --leader-elect=false --secure-port=0 --v=1
  wait_for "kube-proxy's rules for the kubernetes Service" 60 proxied default/kubernetes
  up_done=1
  echo "CDI_NODE_NAME=$node_name"
  echo "CDI_NODE_CONTAINERD=$dir/containerd.sock"
}

proxied() { # namespace/service: kube-proxy has programmed it
  iptables -t nat -S KUBE-SERVICES 2>/dev/null | grep -qF -- "$1"
}

node_ready() { # kubeconfig (JSON, as the e2e harness writes it): the Node reports Ready=True
  python3 - "$1" "$node_name" <<'EOF'
import json, ssl, sys, urllib.request
config = json.load(open(sys.argv[1]))
cluster, user = config["clusters"][0]["cluster"], config["users"][0]["user"]
ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
ctx.load_cert_chain(user["client-certificate"], user["client-key"])
node = json.load(urllib.request.urlopen(f"{cluster['server']}/api/v1/nodes/{sys.argv[2]}", context=ctx, timeout=5))
ready = [c for c in node["status"].get("conditions", []) if c["type"] == "Ready"]
sys.exit(0 if ready and ready[0]["status"] == "True" else 1)
EOF
}

# --- down -----------------------------------------------------------------------------------------------------------

down() {
  set +e
  local name pid
  if [[ -f $dir/pids ]]; then
    # The scheduler, kube-proxy and kubelet first; containerd last, after its containers are gone.
    tac "$dir/pids" | while read -r name pid; do
      [[ $name == containerd ]] && continue
      kill "$pid" 2>/dev/null
    done
    tac "$dir/pids" | while read -r name pid; do
      [[ $name == containerd ]] && continue
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null
    done
    if [[ -S $dir/containerd.sock ]]; then
      local ctr=(ctr --address "$dir/containerd.sock" -n k8s.io) task
      for task in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
        "${ctr[@]}" tasks kill -s SIGKILL "$task" >/dev/null 2>&1
      done
      sleep 1
      for task in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks delete -f "$task" >/dev/null 2>&1; done
      for task in $("${ctr[@]}" containers ls -q 2>/dev/null); do "${ctr[@]}" containers rm "$task" >/dev/null 2>&1; done
    fi
    while read -r name pid; do
      [[ $name == containerd ]] || continue
      kill "$pid" 2>/dev/null
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null
    done <"$dir/pids"
    # A shim whose container could not be deleted: ours by the socket address in its command line.
    for pid in $(pgrep -x containerd-shim-runc-v2 2>/dev/null); do
      if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$dir/containerd.sock"; then kill -9 "$pid"; fi
    done
    rm -f "$dir/pids"
  fi
  # Mounts under DIR (container root filesystems, shm, the pods' network namespaces), deepest first.
  awk -v d="$dir/" 'index($5, d) == 1 { print $5 }' /proc/self/mountinfo | sort -r | while read -r m; do
    umount -l "$m" 2>/dev/null
  done
  if [[ -f $dir/kube-proxy.yaml ]]; then
    local bin
    bin=$(bash "$here/controlplane/build.sh" node 2>/dev/null | tail -1)
    "$bin/kube-proxy" --cleanup --v=0 >"$dir/kube-proxy-cleanup.log" 2>&1
    local table
    local ipt table chain rule
    for ipt in iptables ip6tables; do  # what the kubelet adds: marker chains and KUBE-FIREWALL with its jumps
      for table in mangle nat filter; do
        for chain in KUBE-KUBELET-CANARY KUBE-IPTABLES-HINT KUBE-FIREWALL; do
          "$ipt" -t "$table" -S 2>/dev/null | grep -E -- "^-A [A-Z]+ .*-j $chain( |$)" | while read -r rule; do
            eval "$ipt -t $table -D ${rule#-A }" 2>/dev/null
          done
          "$ipt" -t "$table" -F "$chain" 2>/dev/null && "$ipt" -t "$table" -X "$chain" 2>/dev/null
        done
      done
    done
    # The kubelet's cgroups (cgroupfs driver), now empty.
    find /sys/fs/cgroup -depth -type d -path '*/kubepods*' -exec rmdir {} + 2>/dev/null
  fi
  while iptables -D FORWARD -i "$bridge" ! -o "$bridge" "${tag[@]}" -j DROP 2>/dev/null; do :; done
  while iptables -D FORWARD -i "$service_bridge" "${tag[@]}" -j DROP 2>/dev/null; do :; done
  while iptables -D FORWARD -o "$service_bridge" "${tag[@]}" -j DROP 2>/dev/null; do :; done
  if [[ -f $dir/bridge ]]; then
    ip route del "$service_cidr" dev "$service_bridge" 2>/dev/null
    ip link del "$service_bridge" 2>/dev/null
    ip link del "$bridge" 2>/dev/null
    rm -f "$dir/bridge"
  fi
  if [[ -f $dir/sysctls ]]; then
    while IFS= read -r line; do sysctl -q -w "$line" >/dev/null; done <"$dir/sysctls"
    rm -f "$dir/sysctls"
  fi
  if [[ -f $dir/ip_forward ]]; then
    sysctl -q -w "net.ipv4.ip_forward=$(cat "$dir/ip_forward")" >/dev/null
    rm -f "$dir/ip_forward"
  fi
  rm -rf "$dir/containerd/root" "$dir/containerd/state" "$dir/kubelet/pods" "$dir/pause.tar" 2>/dev/null
  log "stopped; host settings restored"
  return 0
}

command=${1:-}
dir=${2:-}
[[ -n $command && -n $dir ]] || die "usage: hack/node.sh network|up|down DIR [KUBECONFIG IMAGE_ARCHIVE...]"
dir=$(mkdir -p "$dir" && cd "$dir" && pwd)
case $command in
  network) network "$dir" ;;
  up) up "$dir" "${@:3}" ;;
  down) down ;;
  *) die "unknown command $command: network, up or down" ;;
esac
