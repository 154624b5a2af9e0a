#!/usr/bin/env bash
# A real one-node Kubernetes (v1.20) on this machine, for podmirror's cluster tier and for trying
# podmirror as a user would (README: "Try it on a real cluster").
#
#   scripts/cluster.sh up      build once (cached), start the node; idempotent; the last line of its
#                              output is exactly KUBECONFIG=<path>
#   scripts/cluster.sh down    stop it and remove every process, mount, network namespace,
#                              interface, iptables chain, cgroup and file `up` made; restore sysctls
#   scripts/cluster.sh build   only build (binaries, pause image); prints nothing on stdout
#   scripts/cluster.sh status  what runs; exit 0 when the node is Ready
#
# The parts: etcd (Debian etcd-server), kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet and kube-proxy built from Debian's `kubernetes` source (scripts/lib/kube-build.sh, the
# tree .ci/apiserver.sh uses), containerd (Debian package; CRI, overlayfs, runc) with its own root,
# state and socket, CNI bridge + host-local (Debian containernetworking-plugins), kube-proxy in
# iptables mode (Services DNAT as in a real cluster), and a pause image built here (nothing can be
# pulled). No CoreDNS: pods get an empty resolv.conf; podmirror needs no DNS (deploy/README.md).
#
# Addresses (10.x only, nothing on a real network): the bridge pm-cni0 is the node, 10.177.0.1/24
# (pods 10.177.0.0/24 of the cluster CIDR 10.177.0.0/16), Services 10.178.0.0/24. Everything the
# cluster serves listens on 10.177.0.1 or 127.0.0.1, never on the machine's own addresses, and the
# chains PM-FORWARD / PM-PREROUTING keep pod traffic from and to any other interface out.
# Authentication: one cluster CA (cluster/pki), client certificates for every component, kubelet
# serving certificate verified by the apiserver, no anonymous access.
#
# Facts this relies on (measured, ../shared/CLUSTER.md): containerd needs restrict_oom_score_adj
# here; kubelet 1.20 needs --container-runtime=remote, cgroupfs, failSwapOn false; the apiserver
# reaches the kubelet by InternalIP. Kernel tunables the kubelet sets machine-wide (kernel.panic,
# kernel.panic_on_oops, vm.overcommit_memory, ...) are put back as soon as it has set them: this is
# a shared machine, not a dedicated node.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
CACHE=${PODMIRROR_CACHE:-/var/cache/podmirror}
STATE=/var/lib/podmirror-cluster
RUN=/run/podmirror-cluster
SOCK=$RUN/containerd/containerd.sock
KUBECONFIG_PATH=$STATE/admin.kubeconfig
NODE=pm-node
BRIDGE=pm-cni0
NODE_IP=10.177.0.1
POD_SUBNET=10.177.0.0/24
CLUSTER_CIDR=10.177.0.0/16
SERVICE_CIDR=10.178.0.0/24
SERVICE_IP=10.178.0.1
API_PORT=6443
ETCD_PORT=12379
ETCD_PEER_PORT=12380
PAUSE_IMAGE=docker.io/library/pm-pause:1
LOCK=/run/lock/podmirror-cluster.lock
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy)
KUBE_BINARIES=(kube-apiserver kubelet kube-proxy kube-controller-manager kube-scheduler)
# Paths outside $STATE and $RUN that the kubelet, containerd or the CNI plugins create whatever
# they are told; removed by `down` when they did not exist before the first `up`.
SYSTEM_PATHS=(/var/lib/kubelet /var/log/pods /var/log/containers /run/containerd /var/lib/cni
              /opt/containerd /usr/libexec/kubernetes /run/kubernetes /var/lib/containerd /etc/cni)
# Machine-wide settings the node changes: saved before the first `up`, restored by `down`.
SYSCTLS=(net.ipv4.ip_forward net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
         net.bridge.bridge-nf-call-ip6tables)
KUBELET_SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
                 kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
PACKAGES=(containerd runc containernetworking-plugins etcd-server iptables conntrack openssl curl
          util-linux iproute2 gcc libc6-dev)

say() { echo "cluster: $*" >&2; }
die() { echo "cluster: $*" >&2; exit 1; }
kc() { kubectl --kubeconfig "$KUBECONFIG_PATH" "$@"; }

# -- building (cached) ----------------------------------------------------------------------------
ensure_packages() {
  local missing=() p
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
  command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || {
      DEBIAN_FRONTEND=noninteractive apt-get update -q >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
  fi
}

build_pause() {
  local out=$CACHE/cluster/pause.tar tmp
  [ -f "$out" ] && return 0
  say "building the pause image $PAUSE_IMAGE"
  mkdir -p "$CACHE/cluster"
  tmp=$(mktemp -d)
  cat > "$tmp/pause.c" <<'C'
/* The pod sandbox's process: holds the pod's namespaces, reaps orphans, exits on TERM/INT. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
  signal(SIGTERM, quit);
  signal(SIGINT, quit);
  signal(SIGCHLD, reap);
  for (;;) pause();
}
C
  mkdir -p "$tmp/rootfs"
  gcc -static -Os -o "$tmp/rootfs/pause" "$tmp/pause.c"
  strip "$tmp/rootfs/pause"
  echo '{"Entrypoint": ["/pause"], "User": "65535:65535"}' > "$tmp/config.json"
  /usr/bin/python3 "$HERE/lib/ociarchive.py" "$tmp/rootfs" "$out.tmp" --tag "${PAUSE_IMAGE#docker.io/library/}" \
    --config "$tmp/config.json" --epoch 1700000000 >/dev/null
  mv "$out.tmp" "$out"
  rm -rf "$tmp"
}

build() {
  ensure_packages
  local missing=0 b
  for b in "${KUBE_BINARIES[@]}"; do [ -x "$CACHE/$b" ] || missing=1; done
  if [ $missing = 1 ]; then
    say "building ${KUBE_BINARIES[*]} from Debian's kubernetes source (once; cached in $CACHE)"
    local t0=$SECONDS
    source "$HERE/lib/kube-build.sh"
    podmirror_kube_build "${KUBE_BINARIES[@]}"
    say "built in $((SECONDS - t0)) s"
  fi
  build_pause
}

# -- processes ------------------------------------------------------------------------------------
pidfile() { echo "$RUN/$1.pid"; }
running() {
  local pid
  pid=$(cat "$(pidfile "$1")" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}
spawn() {  # spawn NAME ARGV...: detached, logged to $STATE/log/NAME.log, pid in $RUN/NAME.pid
  local name=$1; shift
  running "$name" && return 0
  mkdir -p "$STATE/log" "$RUN"
  # The process writes its own pid (setsid may fork when the caller runs with job control); it does
  # not inherit the lock's descriptor (8), or it would hold the lock for its whole life.
  setsid sh -c 'echo $$ > "$0"; exec "$@"' "$(pidfile "$name")" "$@" </dev/null >>"$STATE/log/$name.log" 2>&1 8>&- &
  local i
  for i in $(seq 1 50); do [ -s "$(pidfile "$name")" ] && break; sleep 0.1; done
  say "started $name (pid $(cat "$(pidfile "$name")"))"
}
wait_for() {  # wait_for SECONDS WHAT COMMAND...
  local limit=$1 what=$2; shift 2
  local end=$((SECONDS + limit))
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $end ]; then
      say "timed out after ${limit} s waiting for $what; last log lines:"
      tail -n 15 "$STATE"/log/*.log >&2 2>/dev/null || true
      exit 1
    fi
    sleep 0.5
  done
}
stop_process() {
  local name=$1 pid i
  pid=$(cat "$(pidfile "$name")" 2>/dev/null) || return 0
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { say "$name did not stop on TERM: KILL"; kill -KILL "$pid" 2>/dev/null || true; }
    say "stopped $name"
  fi
  rm -f "$(pidfile "$name")"
}

# -- the machine's state before the first `up` ----------------------------------------------------
save_machine_state() {
  local f=$STATE/machine-before.env
  [ -f "$f" ] && return 0
  mkdir -p "$STATE"
  [ -d /proc/sys/net/bridge ] || modprobe br_netfilter 2>/dev/null || true
  {
    local s p
    for s in "${SYSCTLS[@]}" "${KUBELET_SYSCTLS[@]}"; do
      sysctl -n "$s" >/dev/null 2>&1 && echo "sysctl $s $(sysctl -n "$s")"
    done
    for p in "${SYSTEM_PATHS[@]}"; do [ -e "$p" ] && echo "path $p"; done
    nft list tables 2>/dev/null | sed 's/^table /nft /'
    ip netns list 2>/dev/null | awk '{print "netns " $1}'
  } > "$f.tmp"
  mv "$f.tmp" "$f"
}
# before ITEM: ITEM existed before the first `up`. Without the saved state nothing can be told
# apart, so everything counts as existing before (down then leaves such things alone).
before() { [ ! -f "$STATE/machine-before.env" ] || grep -qxF "$1" "$STATE/machine-before.env"; }
restore_sysctls() {  # restore_sysctls NAME...: back to the values saved before the first `up`
  local s v
  for s in "$@"; do
    v=$(awk -v k="$s" '$1 == "sysctl" && $2 == k {print $3; exit}' "$STATE/machine-before.env" 2>/dev/null)
    [ -n "$v" ] && [ "$(sysctl -n "$s" 2>/dev/null)" != "$v" ] && sysctl -q -w "$s=$v" >/dev/null 2>&1 || true
  done
}

# -- certificates and kubeconfigs -----------------------------------------------------------------
cert() {  # cert NAME SUBJECT [SAN]: an EC P-256 key and a certificate signed by the cluster CA
  local name=$1 subject=$2 san=${3:-} pki=$STATE/pki
  [ -f "$pki/$name.crt" ] && return 0
  openssl ecparam -genkey -name prime256v1 -noout -out "$pki/$name.key" 2>/dev/null
  openssl req -new -key "$pki/$name.key" -subj "$subject" -out "$pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then echo "extendedKeyUsage=serverAuth,clientAuth"; echo "subjectAltName=$san"
    else echo "extendedKeyUsage=clientAuth"; fi
  } > "$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}
kubeconfig() {  # kubeconfig FILE CERT-NAME
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: podmirror-local
  cluster: {server: "https://$NODE_IP:$API_PORT", certificate-authority: "$STATE/pki/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$STATE/pki/$2.crt", client-key: "$STATE/pki/$2.key"}
contexts:
- name: podmirror-local
  context: {cluster: podmirror-local, user: $2}
current-context: podmirror-local
EOF
}
make_pki() {
  local pki=$STATE/pki
  mkdir -p "$pki" && chmod 700 "$pki"
  if [ ! -f "$pki/ca.crt" ]; then
    openssl ecparam -genkey -name prime256v1 -noout -out "$pki/ca.key" 2>/dev/null
    openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=podmirror-local-cluster-ca" -days 3650 -sha256 \
      -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
      -out "$pki/ca.crt" 2>/dev/null
  fi
  [ -f "$pki/sa.key" ] || { openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
                            openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null; }
  cert apiserver "/CN=kube-apiserver" \
    "IP:$NODE_IP,IP:$SERVICE_IP,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
  cert kubelet "/O=system:nodes/CN=system:node:$NODE" "IP:$NODE_IP,DNS:$NODE"
  cert admin "/O=system:masters/CN=podmirror-local-admin"
  cert kube-proxy "/CN=system:kube-proxy"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  kubeconfig "$KUBECONFIG_PATH" admin
  kubeconfig "$STATE/kubelet.kubeconfig" kubelet
  kubeconfig "$STATE/kube-proxy.kubeconfig" kube-proxy
  kubeconfig "$STATE/controller-manager.kubeconfig" controller-manager
  kubeconfig "$STATE/scheduler.kubeconfig" scheduler
}

# -- network ----------------------------------------------------------------------------------------
guard_chain() {  # guard_chain TABLE CHAIN HOOK RULE...: our chain, jumped to first from HOOK
  local table=$1 chain=$2 hook=$3; shift 3
  iptables -t "$table" -N "$chain" 2>/dev/null || iptables -t "$table" -F "$chain"
  local rule
  for rule in "$@"; do eval "iptables -t $table -A $chain $rule"; done
  iptables -t "$table" -C "$hook" -j "$chain" 2>/dev/null || iptables -t "$table" -I "$hook" 1 -j "$chain"
}
network_up() {
  sysctl -q -w net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1 >/dev/null
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
  fi
  ip addr replace "$NODE_IP/24" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  # Pods reach each other, the node and Services; nothing beyond this machine, and nothing beyond it
  # reaches them (kube-proxy's KUBE-FORWARD accepts established and masqueraded traffic first;
  # nothing from a pod to the outside is either).
  guard_chain filter PM-FORWARD FORWARD \
    "-i $BRIDGE ! -o $BRIDGE -j DROP -m comment --comment podmirror-local-cluster" \
    "-o $BRIDGE ! -i $BRIDGE -j DROP -m comment --comment podmirror-local-cluster"
  guard_chain raw PM-PREROUTING PREROUTING "-i lo -j RETURN" "-i $BRIDGE -j RETURN" \
    "-d $CLUSTER_CIDR -j DROP -m comment --comment podmirror-local-cluster" \
    "-d $SERVICE_CIDR -j DROP -m comment --comment podmirror-local-cluster"
  mkdir -p "$STATE/cni/net.d" "$STATE/cni/networks"
  cat > "$STATE/cni/net.d/10-podmirror.conflist" <<EOF
{
  "cniVersion": "0.4.0",
  "name": "podmirror-local",
  "plugins": [
    {
      "type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {
        "type": "host-local", "dataDir": "$STATE/cni/networks",
        "ranges": [[{"subnet": "$POD_SUBNET", "gateway": "$NODE_IP"}]],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    }
  ]
}
EOF
}

# -- the components ---------------------------------------------------------------------------------
containerd_up() {
  mkdir -p "$STATE/containerd" "$RUN/containerd"
  cat > "$STATE/containerd.toml" <<EOF
version = 2
root = "$STATE/containerd/root"
state = "$RUN/containerd/state"
[grpc]
  address = "$SOCK"
[ttrpc]
  address = "$SOCK.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "$STATE/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # This machine does not let a process lower its OOM score (runc: "failed to update
  # /proc/self/oom_score_adj: Permission denied"); see ../shared/CLUSTER.md.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$RUN/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$STATE/cni/net.d"
EOF
  spawn containerd containerd --config "$STATE/containerd.toml"
  wait_for 60 "containerd" ctr --address "$SOCK" version
  if ! ctr --address "$SOCK" -n k8s.io images ls -q | grep -qxF "$PAUSE_IMAGE"; then
    ctr --address "$SOCK" -n k8s.io images import "$CACHE/cluster/pause.tar" >/dev/null
    say "imported $PAUSE_IMAGE"
  fi
  # podmirror:dev, when scripts/image.sh built it before the node was up (it imports it otherwise)
  local image=$CACHE/image/podmirror-dev.tar
  if [ -f "$image" ] && ! ctr --address "$SOCK" -n k8s.io images ls -q | grep -qxF docker.io/library/podmirror:dev; then
    ctr --address "$SOCK" -n k8s.io images import "$image" >/dev/null
    say "imported podmirror:dev from $image"
  fi
}

etcd_up() {
  spawn etcd etcd --name podmirror-local --data-dir "$STATE/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "podmirror-local=http://127.0.0.1:$ETCD_PEER_PORT" --log-level error
  wait_for 60 "etcd" curl -fsS "http://127.0.0.1:$ETCD_PORT/health"
}

apiserver_up() {
  local pki=$STATE/pki
  spawn kube-apiserver "$CACHE/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port "$API_PORT" --insecure-port 0 \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range "$SERVICE_CIDR" \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" \
    --kubelet-preferred-address-types InternalIP \
    --cert-dir "$STATE/apiserver" --v 1
  wait_for 120 "kube-apiserver" kc get --raw /readyz
}

controllers_up() {
  spawn kube-controller-manager "$CACHE/kube-controller-manager" \
    --kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$STATE/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --port 0 --cert-dir "$STATE/controller-manager" \
    --leader-elect=false --use-service-account-credentials \
    --service-account-private-key-file "$STATE/pki/sa.key" --root-ca-file "$STATE/pki/ca.crt" \
    --cluster-cidr "$CLUSTER_CIDR" --service-cluster-ip-range "$SERVICE_CIDR" --v 1
  spawn kube-scheduler "$CACHE/kube-scheduler" \
    --kubeconfig "$STATE/scheduler.kubeconfig" \
    --authentication-kubeconfig "$STATE/scheduler.kubeconfig" \
    --authorization-kubeconfig "$STATE/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --port 0 --cert-dir "$STATE/scheduler" --leader-elect=false --v 1
}

kubelet_up() {
  mkdir -p "$STATE/kubelet"
  cat > "$STATE/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $STATE/pki/kubelet.crt
tlsPrivateKeyFile: $STATE/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: false}
  x509: {clientCAFile: $STATE/pki/ca.crt}
# Only clients with a certificate from the cluster CA get here (the apiserver, for exec and logs).
authorization: {mode: AlwaysAllow}
cgroupDriver: cgroupfs
failSwapOn: false
clusterDomain: cluster.local
# No cluster DNS: an empty resolv.conf in pods (fails fast) rather than the host's resolver.
resolvConf: ""
volumePluginDir: $STATE/kubelet/volume-plugins
# The image is imported, never pulled (imagePullPolicy: Never): never garbage-collect it.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
EOF
  spawn kubelet "$CACHE/kubelet" --config "$STATE/kubelet.yaml" --kubeconfig "$STATE/kubelet.kubeconfig" \
    --container-runtime=remote --container-runtime-endpoint "unix://$SOCK" \
    --root-dir "$STATE/kubelet" --cert-dir "$STATE/kubelet/pki" \
    --hostname-override "$NODE" --node-ip "$NODE_IP" --pod-infra-container-image "$PAUSE_IMAGE" --v 1
  wait_for 120 "node $NODE Ready" node_ready
}
node_ready() {
  [ "$(kc get node "$NODE" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" = True ]
}

proxy_up() {
  spawn kube-proxy "$CACHE/kube-proxy" --kubeconfig "$STATE/kube-proxy.kubeconfig" \
    --proxy-mode iptables --cluster-cidr "$CLUSTER_CIDR" --hostname-override "$NODE" \
    --bind-address "$NODE_IP" --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
    --nodeport-addresses "$NODE_IP/32" \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0 \
    --v 1
  wait_for 60 "kube-proxy's rules for the kubernetes Service" \
    sh -c "iptables -t nat -S KUBE-SERVICES | grep -q '$SERVICE_IP/32'"
}

# -- up -----------------------------------------------------------------------------------------
up() {
  local t0=$SECONDS
  build
  save_machine_state
  mkdir -p "$STATE" "$RUN"
  chmod 700 "$STATE"
  make_pki
  network_up
  containerd_up
  etcd_up
  apiserver_up
  controllers_up
  local kubelet_was_running=0
  running kubelet && kubelet_was_running=1
  kubelet_up
  # The kubelet sets these machine-wide at start (a production node's choices: panic on oops,
  # overcommit...); on a shared machine they go back to what they were.
  [ $kubelet_was_running = 1 ] || restore_sysctls "${KUBELET_SYSCTLS[@]}"
  proxy_up
  wait_for 60 "the default ServiceAccount" kc -n default get serviceaccount default
  say "node $NODE Ready, up in $((SECONDS - t0)) s (API https://$NODE_IP:$API_PORT, containerd $SOCK)"
  echo "KUBECONFIG=$KUBECONFIG_PATH"
}

# -- down ---------------------------------------------------------------------------------------
kube_cgroups() {  # every kubepods cgroup directory, deepest first
  local c
  for c in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$c" ] && find "$c" -depth -type d
  done 2>/dev/null || true
}
drain_pods() {
  # Pods deleted through the API: the kubelet stops their containers and the runtime calls the CNI
  # (DEL: the pod's network namespace and veth go, host-local releases its address).
  running kube-apiserver && running kubelet && kc get --raw /readyz >/dev/null 2>&1 || return 0
  stop_process kube-controller-manager  # nothing recreates what is deleted
  stop_process kube-scheduler
  kc delete pods --all --all-namespaces --grace-period=10 --wait=false >/dev/null 2>&1 || true
  local end=$((SECONDS + 60))
  while [ $SECONDS -lt $end ]; do
    [ -z "$(kc get pods --all-namespaces -o name 2>/dev/null)" ] && \
      [ -z "$(ctr --address "$SOCK" -n k8s.io tasks ls 2>/dev/null | awk '$3 == "RUNNING"')" ] && break
    sleep 1
  done
  sleep 2  # the kubelet stops each pod's sandbox (CNI DEL) right after its containers
}
kill_leftover_processes() {
  local pid c
  # containerd's shims (they outlive containerd by design) and whatever still runs in a pod cgroup
  for pid in $(pgrep -f -- "containerd-shim-runc-v2 .*-address $SOCK" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
  for c in $(kube_cgroups); do
    [ -f "$c/cgroup.procs" ] || continue
    while read -r pid; do kill -KILL "$pid" 2>/dev/null || true; done < "$c/cgroup.procs"
  done
  sleep 0.5
  for c in $(kube_cgroups); do rmdir "$c" 2>/dev/null || true; done
}
unmount_under() {  # every mount point under the given directories, deepest first
  local dir m
  for dir in "$@"; do
    [ -e "$dir" ] || continue
    findmnt -rn -o TARGET | awk -v d="$dir" 'index($0, d "/") == 1 || $0 == d' | sort -r |
      while read -r m; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  done
}
remove_chains() {  # every KUBE-* and PM-* chain and every rule that jumps to one, IPv4 and IPv6
  local cmd table rule chain
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null || continue
    for table in filter nat mangle raw; do
      "$cmd-save" -t "$table" >/dev/null 2>&1 || continue
      "$cmd-save" -t "$table" | awk '/^-A [A-Z]+ .*-j (KUBE|PM)-/ && !/^-A (KUBE|PM)-/' |
        while read -r rule; do eval "$cmd -t $table -D ${rule#-A }" 2>/dev/null || true; done
      for chain in $("$cmd-save" -t "$table" | awk '/^:(KUBE|PM)-/ {print substr($1, 2)}'); do
        "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd-save" -t "$table" | awk '/^:(KUBE|PM)-/ {print substr($1, 2)}'); do
        "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
  # iptables-nft made its tables on first use: remove those that did not exist before and are empty
  local family name
  nft list tables 2>/dev/null | while read -r _ family name; do
    before "nft $family $name" && continue
    # empty: nothing but the table, its chains' headers and their braces
    if ! nft list table "$family" "$name" 2>/dev/null |
         grep -vqE '^\s*(table .*\{|chain .*\{|type .* hook .*;|\}|)$'; then
      nft delete table "$family" "$name" 2>/dev/null || true
    fi
  done
}
down() {
  if [ ! -d "$STATE" ] && [ ! -d "$RUN" ] && ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    say "not running"; return 0
  fi
  [ -f "$STATE/machine-before.env" ] ||
    say "no record of the machine before 'up' ($STATE/machine-before.env): shared paths, network namespaces and nft tables are left alone"
  drain_pods
  stop_process kube-proxy
  stop_process kubelet
  stop_process kube-scheduler
  stop_process kube-controller-manager
  stop_process kube-apiserver
  stop_process etcd
  if running containerd; then
    local t
    for t in $(ctr --address "$SOCK" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$SOCK" -n k8s.io tasks kill -s KILL "$t" >/dev/null 2>&1 || true
    done
  fi
  stop_process containerd
  kill_leftover_processes
  # Pod network namespaces the runtime made (cni-*), the bridge (their veths go with them)
  local ns
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^cni-/ {print $1}'); do
    before "netns $ns" || { ip netns delete "$ns" 2>/dev/null && say "removed netns $ns"; } || true
  done
  ip link show "$BRIDGE" >/dev/null 2>&1 && ip link delete "$BRIDGE" && say "removed $BRIDGE"
  remove_chains
  restore_sysctls "${SYSCTLS[@]}" "${KUBELET_SYSCTLS[@]}"
  local p
  unmount_under "$STATE" "$RUN" "${SYSTEM_PATHS[@]}"
  for p in "${SYSTEM_PATHS[@]}"; do
    if [ -e "$p" ] && ! before "path $p"; then rm -rf "$p" && say "removed $p"; fi
  done
  rm -rf "$STATE" "$RUN"
  say "down: nothing of the cluster is left"
}

status() {
  local c ok=0
  for c in "${COMPONENTS[@]}"; do
    if running "$c"; then echo "$c: running (pid $(cat "$(pidfile "$c")"))"; else echo "$c: not running"; fi
  done
  node_ready && { echo "node $NODE: Ready"; ok=1; } || echo "node $NODE: not Ready"
  echo "KUBECONFIG=$KUBECONFIG_PATH"
  [ $ok = 1 ]
}

[ "$(id -u)" = 0 ] || die "needs root"
case "${1:-}" in
  up|down|build)
    # One cluster per machine: concurrent up/down wait for each other. A caller that holds the lock
    # for longer (the test tier: up, tests, down) sets PODMIRROR_CLUSTER_LOCKED=1.
    if [ "${PODMIRROR_CLUSTER_LOCKED:-}" != 1 ]; then
      mkdir -p "${LOCK%/*}"; exec 8>"$LOCK"; flock 8
    fi
    "$1" ;;
  status) status ;;
  *) echo "usage: scripts/cluster.sh up|down|build|status" >&2; exit 2 ;;
esac
