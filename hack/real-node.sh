#!/usr/bin/env bash
# One real node for the local control plane (hack/local-cluster.sh): containerd + runc + a
# kubelet and a kube-proxy built from k8s.io/kubernetes (hack/tools/kubelet/go.mod) on this
# machine, joined to the running cluster next to kwok's fake nodes. Pods scheduled there run as
# real containers and reach ClusterIP Services (kube-proxy, iptables mode); there is no cluster
# DNS, so they reach a Service by its IP, not its name.
#
#   hack/real-node.sh up       install packages, build what is missing (cached), start
#                              containerd, the kubelet and kube-proxy, wait for the node to be
#                              Ready and the Service rules to be in place
#   hack/real-node.sh down     drain, stop all three, restore every sysctl and iptables rule
#                              changed (and say so if the rules differ from before `up`)
#   hack/real-node.sh status   exit 0 when the node is up and Ready and kube-proxy runs
#   hack/real-node.sh image    build the phasegate image (runtime stage of ./Dockerfile, the
#                              host-built binary copied in) and load it into containerd
#   hack/real-node.sh image-full  the same from the full multi-stage Dockerfile (slow)
#   hack/real-node.sh psql-image  postgres:17-alpine for examples/psql-job (a stand-in: this
#                              host's psql and dash on the distroless stand-in)
#   hack/real-node.sh env      print NODE=, NODE_IP=, TAINT_KEY=, POD_CIDR=, IMAGE=,
#                              CONTAINERD_ADDRESS= (for ctr), KUBELET_PID_FILE= for scripts
#
# The node is tainted `phasegate.dev/real-node=true:NoSchedule` and labelled
# `phasegate.dev/real-node=true`: only pods that tolerate the taint (and select the label) run
# here, so kwok-based tests keep their pods on fake nodes. kwok manages every node of the
# cluster (--manage-all-nodes); a node Lease held by the node itself before the kubelet starts
# keeps kwok away from it.
#
# Workarounds this kind of VM needs (see docs in hack/README.md): hard rlimits cannot be
# raised, negative oom_score_adj is refused (restrict_oom_score_adj), hybrid cgroups (runc and
# the cgroupfs driver), no registry (images built locally with buildah, imported with ctr).
#
# Environment: PHASEGATE_CACHE (default ~/.cache/phasegate); cache in $PHASEGATE_CACHE/real-node.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HACK="${REPO_ROOT}/hack"
CACHE="${PHASEGATE_CACHE:-${HOME}/.cache/phasegate}"
RN="${CACHE}/real-node"
KUBECONFIG_PATH="${CACHE}/kubeconfig"
modver() { awk -v m="$2" '$1 == m && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == m {print $3; exit}' "$1"; }
K8S_VERSION="$(modver "${HACK}/tools/kubelet/go.mod" k8s.io/kubernetes)"
KUBELET="${RN}/kubelet-${K8S_VERSION}/kubelet"
KUBE_PROXY="${RN}/kubelet-${K8S_VERSION}/kube-proxy"
KUBECTL="${CACHE}/k8s-$(modver "${HACK}/tools/kube/go.mod" k8s.io/kubernetes)/bin/kubectl"
# Runtime state (containerd's images and snapshots stay across down/up; pods do not).
STATE=/var/lib/phasegate-real-node
RUN=/run/phasegate-real-node
# containerd of its own (socket, state): a system containerd, if any, is left alone.
CONTAINERD_SOCK=/run/phasegate-real-node/containerd.sock
CONTAINERD_STATE=/run/phasegate-real-node/containerd
NODE="$(hostname | tr '[:upper:]' '[:lower:]')"
NODE_IP="$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") {print $(i + 1); exit}}')"
TAINT_KEY=phasegate.dev/real-node
POD_CIDR=10.244.0.0/24
POD_GATEWAY=10.244.0.1
BRIDGE=phasegate0
KUBE_PROXY_HEALTHZ_PORT=10256
KUBE_PROXY_METRICS_PORT=10249
PAUSE_IMAGE=localhost/phasegate-pause:3.10
VERSION="$(awk -F'"' '/^version *=/ {print $2; exit}' "${REPO_ROOT}/Cargo.toml")"
IMAGE="docker.io/library/phasegate:${VERSION}"
# The kubelet's, the CNI plugins' and kube-proxy's (kube-proxy is configured to leave the
# conntrack limits and route_localnet alone; they are saved and restored all the same).
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables
  net.ipv4.conf.all.route_localnet net.netfilter.nf_conntrack_max
  net.netfilter.nf_conntrack_tcp_timeout_established net.netfilter.nf_conntrack_tcp_timeout_close_wait)
# buildah/podman settings of this machine (rlimits, runc), without touching /etc/containers.
export CONTAINERS_CONF="${RN}/containers.conf"

log() { echo "[real-node] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }
kc() { "${KUBECTL}" --kubeconfig "${KUBECONFIG_PATH}" "$@"; }
ctr_() { ctr --address "${CONTAINERD_SOCK}" -n k8s.io "$@"; }

# ---------------------------------------------------------------- packages and builds

PACKAGES=(containerd runc containernetworking-plugins buildah skopeo debootstrap iptables conmon gcc libc6-dev curl jq)

install_packages() {
  local p missing=()
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "${p}" 2>/dev/null | grep -q 'install ok installed' || missing+=("${p}")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing: ${missing[*]}"
  local SUDO=""; [[ "$(id -u)" -ne 0 ]] && SUDO="sudo"
  if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

write_containers_conf() {
  mkdir -p "${RN}"
  # The VM cannot raise hard rlimits (no CAP_SYS_RESOURCE); crun refuses hybrid cgroups.
  cat >"${CONTAINERS_CONF}.tmp" <<'EOF'
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
  mv -f "${CONTAINERS_CONF}.tmp" "${CONTAINERS_CONF}"
}

# build_k8s <binary path> <cmd name>: k8s.io/kubernetes/cmd/<name> at K8S_VERSION, cached.
build_k8s() {
  local out="$1" name="$2"
  [[ -x "${out}" ]] && return 0
  command -v go >/dev/null || die "go is required to build the ${name}"
  local tmp="${out}.tmp.$$" start flags="-s -w" p
  mkdir -p "$(dirname "${out}")"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X ${p}.gitVersion=${K8S_VERSION} -X ${p}.gitMajor=$(echo "${K8S_VERSION#v}" | cut -d. -f1)"
    flags+=" -X ${p}.gitMinor=$(echo "${K8S_VERSION#v}" | cut -d. -f2) -X ${p}.gitTreeState=clean"
  done
  start=$(date +%s)
  log "building ${name} ${K8S_VERSION} from k8s.io/kubernetes/cmd/${name} ..."
  (cd "${HACK}/tools/kubelet" && CGO_ENABLED=0 go build -mod=readonly -trimpath -ldflags "${flags}" \
    -o "${tmp}" "k8s.io/kubernetes/cmd/${name}") || { rm -f "${tmp}"; die "${name} build failed"; }
  mv -f "${tmp}" "${out}"
  log "built ${name} in $(($(date +%s) - start))s"
}

image_exists() { buildah inspect --type image "$1" >/dev/null 2>&1; }

# The sandbox ("pause") image: a static program that sleeps and reaps, nothing else.
build_pause() {
  image_exists "${PAUSE_IMAGE}" && return 0
  local dir ctr
  dir="$(mktemp -d)"
  cat >"${dir}/pause.c" <<'EOF'
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void reap(int s) { (void)s; while (waitpid(-1, 0, WNOHANG) > 0) {} }
static void quit(int s) { (void)s; _exit(0); }
int main(void) {
  signal(SIGINT, quit); signal(SIGTERM, quit); signal(SIGCHLD, reap);
  for (;;) pause();
}
EOF
  gcc -static -O2 -o "${dir}/pause" "${dir}/pause.c"
  ctr="$(buildah from scratch)"
  buildah copy "${ctr}" "${dir}/pause" /pause >/dev/null
  buildah config --entrypoint '["/pause"]' --user 65535:65535 "${ctr}"
  buildah commit -q "${ctr}" "${PAUSE_IMAGE}" >/dev/null
  buildah rm "${ctr}" >/dev/null
  rm -rf "${dir}"
  log "built ${PAUSE_IMAGE}"
}

# gcr.io/distroless/cc-debian12:nonroot, rebuilt from the same Debian packages (no registry
# here): glibc, libgcc, libstdc++, libssl, tzdata, CA certificates, passwd with nonroot 65532.
DISTROLESS=gcr.io/distroless/cc-debian12:nonroot
build_distroless() {
  image_exists "${DISTROLESS}" && return 0
  local dir ctr deb
  dir="$(mktemp -d)"
  mkdir -p "${dir}/debs" "${dir}/root"
  (cd "${dir}/debs" && apt-get download -q base-files netbase tzdata libc6 libgcc-s1 libgomp1 \
    libstdc++6 libssl3 >/dev/null 2>&1) || { apt-get update -qq && (cd "${dir}/debs" && apt-get download -q \
    base-files netbase tzdata libc6 libgcc-s1 libgomp1 libstdc++6 libssl3 >/dev/null); }
  for deb in "${dir}"/debs/*.deb; do dpkg-deb -x "${deb}" "${dir}/root"; done
  rm -rf "${dir}/root/usr/share/doc" "${dir}/root/usr/share/man" "${dir}/root/usr/share/info"
  mkdir -p "${dir}/root/etc/ssl/certs" "${dir}/root/home/nonroot" "${dir}/root/tmp"
  # This machine's CA bundle (what ca-certificates would install here).
  cp /etc/ssl/certs/ca-certificates.crt "${dir}/root/etc/ssl/certs/ca-certificates.crt"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"${dir}/root/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\nnonroot:x:65532:\n' >"${dir}/root/etc/group"
  chown 65532:65532 "${dir}/root/home/nonroot"
  chmod 1777 "${dir}/root/tmp"
  tar -C "${dir}/root" --numeric-owner -cf "${dir}/root.tar" .
  ctr="$(buildah from scratch)"
  buildah add "${ctr}" "${dir}/root.tar" / >/dev/null
  buildah config --user 65532:65532 --workingdir /home/nonroot \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt "${ctr}"
  buildah commit -q "${ctr}" "${DISTROLESS}" >/dev/null
  buildah rm "${ctr}" >/dev/null
  rm -rf "${dir}"
  log "built ${DISTROLESS} (stand-in, from Debian packages)"
}

# docker.io/library/rust:<ver>-bookworm for the full build: debootstrap + gcc + the host's
# Rust toolchain (the same version rustup installed here), plus this machine's CA.
build_rust_base() {
  local want="$1"
  image_exists "${want}" && return 0
  local dir ctr mirror
  dir="$(mktemp -d)"
  mirror="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)"
  mirror="${mirror:-http://deb.debian.org/debian}"
  log "debootstrap bookworm from ${mirror} (about 2 minutes) ..."
  debootstrap --variant=minbase --include=ca-certificates,gcc,libc6-dev,make,pkg-config,git,curl \
    bookworm "${dir}/root" "${mirror}" >"${RN}/debootstrap.log" 2>&1 || { tail -20 "${RN}/debootstrap.log" >&2; die "debootstrap failed (log: ${RN}/debootstrap.log)"; }
  cp /usr/local/share/ca-certificates/*.crt "${dir}/root/usr/local/share/ca-certificates/" 2>/dev/null || true
  chroot "${dir}/root" update-ca-certificates >/dev/null 2>&1 || true
  # The host's toolchain of the tag's version (e.g. rust:1.95-bookworm -> 1.95.x), else stable.
  local rustup="${RUSTUP_HOME:-${HOME}/.rustup}" ver tc
  ver="$(sed -E 's#.*:([0-9]+\.[0-9]+).*#\1#' <<<"${want}")"
  tc="$(ls -d "${rustup}/toolchains/${ver}"*-x86_64-unknown-linux-gnu 2>/dev/null | head -1)"
  [[ -n "${tc}" && -x "$(readlink -f "${tc}")/bin/cargo" ]] || tc="${rustup}/toolchains/stable-x86_64-unknown-linux-gnu"
  [[ -x "${tc}/bin/cargo" ]] || die "no Rust toolchain under ${rustup}/toolchains"
  mkdir -p "${dir}/root/usr/local/rust" "${dir}/root/usr/local/cargo"
  cp -a "$(readlink -f "${tc}")/." "${dir}/root/usr/local/rust/"
  tar -C "${dir}/root" --numeric-owner -cf "${dir}/root.tar" .
  rm -rf "${dir}/root"
  ctr="$(buildah from scratch)"
  buildah add "${ctr}" "${dir}/root.tar" / >/dev/null
  buildah config --env CARGO_HOME=/usr/local/cargo \
    --env PATH=/usr/local/cargo/bin:/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${ctr}"
  buildah commit -q "${ctr}" "${want}" >/dev/null
  buildah rm "${ctr}" >/dev/null
  rm -rf "${dir}"
  log "built ${want} (stand-in)"
}

# Copy a buildah image into containerd's k8s.io namespace under the name the kubelet asks for.
load_image() {
  local src="$1" name="$2" tar
  tar="$(mktemp -u)"
  buildah push -q "${src}" "docker-archive:${tar}:${name}" >/dev/null
  ctr_ images import "${tar}" >/dev/null
  rm -f "${tar}"
}

# The phasegate image. Fast path: the runtime stage of ./Dockerfile, verbatim, with the
# binary built on this host (same Debian release, so the same glibc) copied in.
cmd_image() {
  need_up
  write_containers_conf
  build_distroless
  local start dir bin
  start=$(date +%s)
  # The debug profile by default: the test suite has built it already, and a cold release
  # build would add ~20 minutes to CI for the same behaviour (PHASEGATE_IMAGE_PROFILE=release
  # for the release build). Debug info is stripped either way.
  local profile="${PHASEGATE_IMAGE_PROFILE:-debug}" flag=""
  [[ "${profile}" == "release" ]] && flag="--release"
  log "building the ${profile} binary (cargo build ${flag} --bin phasegate) ..."
  (cd "${REPO_ROOT}" && cargo build -q ${flag} --locked --bin phasegate)
  bin="${CARGO_TARGET_DIR:-${REPO_ROOT}/target}/${profile}/phasegate"
  [[ -x "${bin}" ]] || die "no ${profile} binary at ${bin}"
  dir="$(mktemp -d)"
  cp "${bin}" "${dir}/phasegate"
  strip --strip-debug "${dir}/phasegate"
  # Everything from the runtime FROM on, with the build stage's output replaced by the file.
  awk '/^FROM gcr.io\/distroless\/cc-debian12:nonroot/ {on = 1} on' "${REPO_ROOT}/Dockerfile" \
    | sed 's#^COPY --from=build /out/phasegate #COPY phasegate #' >"${dir}/Dockerfile"
  grep -q '^COPY phasegate /usr/local/bin/phasegate$' "${dir}/Dockerfile" \
    || die "the runtime stage of ./Dockerfile no longer copies /out/phasegate; update $0"
  buildah bud -q --pull=never --runtime /usr/sbin/runc -f "${dir}/Dockerfile" -t "localhost/phasegate:${VERSION}" "${dir}" >/dev/null
  rm -rf "${dir}"
  load_image "localhost/phasegate:${VERSION}" "${IMAGE}"
  ensure_pause
  buildah rmi --prune >/dev/null 2>&1 || true # the previous build's image, now untagged
  log "image ${IMAGE} built and loaded into containerd in $(($(date +%s) - start))s"
}

# postgres:17-alpine, as examples/psql-job uses it (no registry here): the distroless
# stand-in plus this host's psql (PostgreSQL 15's client), dash as /bin/sh and the libraries
# ldd names, and a postgres user of uid 70 as in the alpine image.
PSQL_IMAGE=docker.io/library/postgres:17-alpine
cmd_psql_image() {
  need_up
  write_containers_conf
  build_distroless
  if ! image_exists localhost/phasegate-psql:17-alpine; then
    local dir ctr psql_bin lib
    psql_bin=/usr/lib/postgresql/15/bin/psql
    [[ -x "${psql_bin}" ]] || die "no ${psql_bin} (hack/install-deps.sh installs postgresql)"
    dir="$(mktemp -d)"
    mkdir -p "${dir}/root/usr/local/bin" "${dir}/root/bin" "${dir}/root/etc"
    cp "${psql_bin}" "${dir}/root/usr/local/bin/psql"
    cp "$(readlink -f /bin/dash)" "${dir}/root/bin/sh"
    for lib in $(ldd "${psql_bin}" /bin/dash | awk '$2 == "=>" && $3 ~ /^\// {print $3}' | sort -u); do
      mkdir -p "${dir}/root$(dirname "${lib}")"
      cp -L "${lib}" "${dir}/root${lib}"
    done
    printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\npostgres:x:70:70:postgres:/tmp:/bin/sh\n' >"${dir}/root/etc/passwd"
    printf 'root:x:0:\nnonroot:x:65532:\npostgres:x:70:\n' >"${dir}/root/etc/group"
    ctr="$(buildah from --pull=never "${DISTROLESS}")"
    buildah copy "${ctr}" "${dir}/root" / >/dev/null
    buildah config --user 70:70 --workingdir /tmp "${ctr}"
    buildah commit -q "${ctr}" localhost/phasegate-psql:17-alpine >/dev/null
    buildah rm "${ctr}" >/dev/null
    rm -rf "${dir}"
  fi
  load_image localhost/phasegate-psql:17-alpine "${PSQL_IMAGE}"
  log "image ${PSQL_IMAGE} (stand-in: this host's psql and dash) loaded into containerd"
}

# The full multi-stage build of ./Dockerfile, unchanged (local stand-ins for its base images).
cmd_image_full() {
  need_up
  write_containers_conf
  build_distroless
  local rust start
  rust="$(awk '/^FROM .* AS build/ {print $2; exit}' "${REPO_ROOT}/Dockerfile")"
  build_rust_base "${rust}"
  start=$(date +%s)
  log "buildah bud of ./Dockerfile (full build, tens of minutes) ..."
  (cd "${REPO_ROOT}" && buildah bud --pull=never --runtime /usr/sbin/runc --layers --network host \
    -t "localhost/phasegate:${VERSION}-full" .)
  load_image "localhost/phasegate:${VERSION}-full" "docker.io/library/phasegate:${VERSION}-full"
  log "full image build done in $(($(date +%s) - start))s: docker.io/library/phasegate:${VERSION}-full"
}

# ---------------------------------------------------------------- runtime configuration

write_configs() {
  mkdir -p "${RN}/etc/net.d" "${STATE}" "${RUN}"
  cat >"${RN}/etc/containerd.toml" <<EOF
version = 2
root = "${STATE}/containerd"
state = "${CONTAINERD_STATE}"
[grpc]
  address = "${CONTAINERD_SOCK}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  # The VM refuses negative oom_score_adj values (pod sandboxes ask for -998).
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "/usr/sbin/runc"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${RN}/etc/net.d"
EOF
  cat >"${RN}/etc/net.d/10-phasegate.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "phasegate",
  "plugins": [
    {"type": "bridge", "bridge": "${BRIDGE}", "isGateway": true, "ipMasq": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "${POD_CIDR}", "gateway": "${POD_GATEWAY}"}]],
              "routes": [{"dst": "0.0.0.0/0"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  cat >"${RN}/etc/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://${CONTAINERD_SOCK}
failSwapOn: false
failCgroupV1: false
# The local API server has no kubelet client certificate (logs and exec go through here).
authentication:
  anonymous: {enabled: true}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
# All addresses: the API server reaches a kubelet (logs, exec) at the Node's Hostname address
# first, and this host's name may resolve to 127.0.0.1 (/etc/hosts), not to the node IP.
address: 0.0.0.0
readOnlyPort: 0
staticPodPath: ""
serializeImagePulls: false
# Only local images: never garbage-collect them away.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Absolute floors: a big, nearly full shared disk must not make the kubelet evict pods or
# delete images it cannot pull back (no registry here).
evictionHard: {memory.available: "100Mi", nodefs.available: "256Mi", imagefs.available: "256Mi", nodefs.inodesFree: "1%"}
protectKernelDefaults: false
makeIPTablesUtilChains: true
cgroupsPerQOS: true
enforceNodeAllocatable: []
registerWithTaints:
  - {key: ${TAINT_KEY}, value: "true", effect: NoSchedule}
EOF
  # kube-proxy in iptables mode: ClusterIP Services work from this node's pods (and from the
  # host). It leaves the conntrack sysctls and route_localnet alone (zeros below), and opens
  # NodePorts on the node's address only. kube-proxy exits as soon as its config file is
  # written to (even with the same content): replace the file only when it changes, and then
  # restart kube-proxy (start_kube_proxy).
  cat >"${RN}/etc/kube-proxy.yaml.new" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clientConnection: {kubeconfig: ${KUBECONFIG_PATH}}
hostnameOverride: ${NODE}
clusterCIDR: ${POD_CIDR}
healthzBindAddress: 127.0.0.1:${KUBE_PROXY_HEALTHZ_PORT}
metricsBindAddress: 127.0.0.1:${KUBE_PROXY_METRICS_PORT}
nodePortAddresses: ["${NODE_IP}/32"]
iptables: {localhostNodePorts: false, masqueradeAll: false, minSyncPeriod: 1s, syncPeriod: 30s}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
  if cmp -s "${RN}/etc/kube-proxy.yaml.new" "${RN}/etc/kube-proxy.yaml"; then
    rm -f "${RN}/etc/kube-proxy.yaml.new"
  else
    mv -f "${RN}/etc/kube-proxy.yaml.new" "${RN}/etc/kube-proxy.yaml"
    KUBE_PROXY_CONFIG_CHANGED=1
  fi
}

# ---------------------------------------------------------------- processes

# Running, and not a zombie (a daemon that exited may stay one here: PID 1 may not reap it).
running() { kill -0 "$1" 2>/dev/null && [[ "$(ps -o stat= -p "$1" 2>/dev/null)" != Z* ]]; }
pid_alive() { [[ -f "$1" ]] && running "$(cat "$1")"; }
containerd_up() { ctr --address "${CONTAINERD_SOCK}" version >/dev/null 2>&1; }
node_ready() {
  [[ "$(kc get node "${NODE}" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}
wait_for() {
  local timeout="$1" what="$2" deadline
  shift 2
  deadline=$(($(date +%s) + timeout))
  until "$@" >/dev/null 2>&1; do
    (($(date +%s) < deadline)) || die "timed out after ${timeout}s waiting for ${what}"
    sleep 0.5
  done
}
need_up() { pid_alive "${RUN}/containerd.pid" && containerd_up || die "the real node is not up (run: $0 up)"; }

save_system_state() {
  # Saved once per up/down cycle: `down` puts these back.
  [[ -f "${RUN}/sysctl.before" ]] && return 0
  local s
  for s in "${SYSCTLS[@]}"; do
    [[ -e "/proc/sys/${s//.//}" ]] && echo "${s}=$(sysctl -n "${s}")"
  done >"${RUN}/sysctl.before.tmp"
  iptables-save >"${RUN}/iptables.before" # for reference: down drops KUBE-*/CNI-* chains only
  ls /var/run/netns 2>/dev/null >"${RUN}/netns.before" || true
  mv -f "${RUN}/sysctl.before.tmp" "${RUN}/sysctl.before"
}

start_containerd() {
  if pid_alive "${RUN}/containerd.pid" && containerd_up; then return 0; fi
  log "starting containerd ..."
  # Daemons must not inherit the lock's fd (fd 8), nor the caller's stdout.
  setsid containerd --config "${RN}/etc/containerd.toml" </dev/null >"${RN}/containerd.log" 2>&1 8>&- 9>&- &
  echo $! >"${RUN}/containerd.pid"
  wait_for 30 "containerd" containerd_up
  ensure_pause
}

# The sandbox image must be in containerd (it cannot be pulled).
ensure_pause() {
  ctr_ images check "name==${PAUSE_IMAGE}" 2>/dev/null | grep -q . || load_image "${PAUSE_IMAGE}" "${PAUSE_IMAGE}"
}

start_kubelet() {
  if pid_alive "${RUN}/kubelet.pid"; then
    node_ready && return 0
    # E.g. the control plane was recreated: the kubelet still talks to the old one.
    log "kubelet running but node ${NODE} is not Ready in this cluster; restarting the kubelet"
    stop_pid "${RUN}/kubelet.pid"
  fi
  # kwok (--manage-all-nodes) takes a node whose Lease is free; the node holds its own first.
  kc apply -f - >/dev/null <<EOF
apiVersion: coordination.k8s.io/v1
kind: Lease
metadata:
  name: ${NODE}
  namespace: kube-node-lease
spec:
  holderIdentity: ${NODE}
  leaseDurationSeconds: 40
  renewTime: "$(date -u +%Y-%m-%dT%H:%M:%S.000000Z)"
EOF
  log "starting kubelet ${K8S_VERSION} as node ${NODE} (${NODE_IP}) ..."
  mkdir -p "${STATE}/kubelet"
  setsid "${KUBELET}" \
    --config "${RN}/etc/kubelet.yaml" \
    --kubeconfig "${KUBECONFIG_PATH}" \
    --root-dir "${STATE}/kubelet" \
    --hostname-override "${NODE}" \
    --node-ip "${NODE_IP}" \
    --node-labels "${TAINT_KEY}=true" \
    --pod-infra-container-image "${PAUSE_IMAGE}" \
    --v 1 </dev/null >"${RN}/kubelet.log" 2>&1 8>&- 9>&- &
  echo $! >"${RUN}/kubelet.pid"
  wait_for 120 "node ${NODE} Ready (log: ${RN}/kubelet.log)" node_ready
}

kube_proxy_synced() { curl -fsS --max-time 2 "http://127.0.0.1:${KUBE_PROXY_HEALTHZ_PORT}/healthz" >/dev/null; }

start_kube_proxy() {
  if [[ -n "${KUBE_PROXY_CONFIG_CHANGED:-}" ]] && pid_alive "${RUN}/kube-proxy.pid"; then
    log "kube-proxy's configuration changed; restarting it"
    stop_pid "${RUN}/kube-proxy.pid"
  fi
  if pid_alive "${RUN}/kube-proxy.pid"; then
    kube_proxy_synced && return 0
    log "kube-proxy running but not healthy ($(curl -sS --max-time 2 "http://127.0.0.1:${KUBE_PROXY_HEALTHZ_PORT}/healthz" 2>&1 | head -c 400)); restarting it (previous log: ${RN}/kube-proxy.log.1)"
    stop_pid "${RUN}/kube-proxy.pid"
    mv -f "${RN}/kube-proxy.log" "${RN}/kube-proxy.log.1" 2>/dev/null || true
  fi
  log "starting kube-proxy ${K8S_VERSION} (iptables mode) ..."
  setsid "${KUBE_PROXY}" --config "${RN}/etc/kube-proxy.yaml" --v 1 \
    </dev/null >"${RN}/kube-proxy.log" 2>&1 8>&- 9>&- &
  echo $! >"${RUN}/kube-proxy.pid"
  # Healthy once it has written the rules of every Service (the `kubernetes` one included).
  wait_for 60 "kube-proxy healthy (log: ${RN}/kube-proxy.log)" kube_proxy_synced
  wait_for 30 "kube-proxy's KUBE-SERVICES chain" iptables -t nat -S KUBE-SERVICES
}

cmd_up() {
  local start
  start=$(date +%s)
  [[ "$(id -u)" -eq 0 ]] || die "must run as root (containerd and the kubelet)"
  [[ -x "${KUBECTL}" && -s "${KUBECONFIG_PATH}" ]] || die "no local cluster (run: hack/local-cluster.sh up)"
  kc get --raw /readyz >/dev/null || die "the local cluster's API server is not ready"
  install_packages
  write_containers_conf
  build_k8s "${KUBELET}" kubelet
  build_k8s "${KUBE_PROXY}" kube-proxy
  build_pause
  build_distroless
  mkdir -p "${RUN}" "${STATE}"
  write_configs
  save_system_state
  modprobe br_netfilter 2>/dev/null || true
  start_containerd
  start_kubelet
  start_kube_proxy
  log "node ${NODE} is Ready in $(($(date +%s) - start))s (taint ${TAINT_KEY}=true:NoSchedule; logs in ${RN})"
}

stop_pid() {
  local file="$1" pid i
  [[ -f "${file}" ]] || return 0
  pid="$(cat "${file}")"
  if running "${pid}"; then
    kill "${pid}" 2>/dev/null || true
    for i in $(seq 1 40); do running "${pid}" || break; sleep 0.25; done
    running "${pid}" && kill -9 "${pid}" 2>/dev/null || true
  fi
  rm -f "${file}"
}

# Remove the chains the kubelet (KUBE-*) and the CNI plugins (CNI-*) added, and every rule
# jumping to them; other rules stay as they are.
drop_chains() {
  local bin="$1" rules
  command -v "${bin}-save" >/dev/null || return 0
  rules="$("${bin}-save" 2>/dev/null)" || return 0
  grep -qE '(^:| -j )(KUBE-|CNI-)' <<<"${rules}" || return 0
  awk '/^:(KUBE-|CNI-)/ || /^-A (KUBE-|CNI-)/ || / -j (KUBE-|CNI-)/ {next} {print}' <<<"${rules}" \
    | "${bin}-restore" || log "WARNING: ${bin}-restore failed; check ${bin}-save"
}

# iptables-save output as comparable lines "<table> <rule or chain>": no comments, packet
# counters or COMMITs, and no built-in chain left at its default ACCEPT (a table that holds
# nothing else equals one never loaded).
rules_of() {
  sed -e '/^#/d' -e '/^COMMIT$/d' -e 's/ \[[0-9]*:[0-9]*\]$//' \
    | awk '/^\*/ {t = $0; next} /^:(PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING) ACCEPT$/ {next} {print t " " $0}' | sort
}

cmd_down() {
  local c pid shim ns
  if [[ -s "${KUBECONFIG_PATH}" ]] && kc get node "${NODE}" >/dev/null 2>&1; then
    log "draining node ${NODE} ..."
    kc cordon "${NODE}" >/dev/null 2>&1 || true
    if pid_alive "${RUN}/kubelet.pid"; then
      kc delete pods -A --field-selector "spec.nodeName=${NODE}" --wait=false >/dev/null 2>&1 || true
      for _ in $(seq 1 60); do
        [[ -z "$(kc get pods -A --field-selector "spec.nodeName=${NODE}" -o name 2>/dev/null)" ]] && break
        sleep 0.5
      done
    fi
  fi
  stop_pid "${RUN}/kubelet.pid"
  # Before its chains go (it would write them again).
  stop_pid "${RUN}/kube-proxy.pid"
  if [[ -s "${KUBECONFIG_PATH}" ]]; then
    kc delete pods -A --field-selector "spec.nodeName=${NODE}" --force --grace-period=0 >/dev/null 2>&1 || true
    kc delete node "${NODE}" --wait=false >/dev/null 2>&1 || true
    kc delete lease -n kube-node-lease "${NODE}" >/dev/null 2>&1 || true
  fi
  if pid_alive "${RUN}/containerd.pid" && containerd_up; then
    # Containers left (e.g. the kubelet was gone): kill them, their shims go with them.
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "${c}" >/dev/null 2>&1 || true; done
    sleep 1
    for c in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks delete -f "${c}" >/dev/null 2>&1 || true; done
    for c in $(ctr_ containers ls -q 2>/dev/null); do ctr_ containers delete "${c}" >/dev/null 2>&1 || true; done
  fi
  stop_pid "${RUN}/containerd.pid"
  # Shims containerd started and that outlived it.
  for shim in "${CONTAINERD_STATE}"/io.containerd.runtime.v2.task/k8s.io/*/shim.pid; do
    [[ -f "${shim}" ]] || continue
    pid="$(cat "${shim}")"
    [[ "$(ps -o comm= -p "${pid}" 2>/dev/null)" == containerd-shim* ]] && kill "${pid}" 2>/dev/null || true
  done
  # Network namespaces the CNI plugins made and nobody deleted.
  for ns in $(ls /var/run/netns 2>/dev/null); do
    grep -qx "${ns}" "${RUN}/netns.before" 2>/dev/null && continue
    [[ "${ns}" == cni-* ]] || continue
    umount "/var/run/netns/${ns}" 2>/dev/null || true
    rm -f "/var/run/netns/${ns}"
  done
  ip link del "${BRIDGE}" 2>/dev/null || true
  rm -rf /var/lib/cni/networks/phasegate /var/lib/cni/results
  # Pod volumes (tmpfs for tokens) under the kubelet's root.
  if [[ -d "${STATE}/kubelet" ]]; then
    grep " ${STATE}/kubelet" /proc/mounts | awk '{print $2}' | sort -r | while read -r m; do umount -l "${m}" 2>/dev/null || true; done
    rm -rf "${STATE}/kubelet"
  fi
  # The kubelet's, kube-proxy's and the CNI plugins' sysctls and iptables chains.
  drop_chains iptables
  drop_chains ip6tables
  if [[ -f "${RUN}/iptables.before" ]]; then
    # Say so when the rules are not what they were before `up` (something else changed them
    # meanwhile, or a rule of ours outside a KUBE-/CNI- chain was left).
    local diff
    diff="$(diff <(rules_of <"${RUN}/iptables.before") <(iptables-save 2>/dev/null | rules_of) || true)"
    [[ -z "${diff}" ]] || log "WARNING: iptables rules differ from before 'up':"$'\n'"${diff}"
  fi
  if [[ -f "${RUN}/sysctl.before" ]]; then
    while IFS= read -r line; do sysctl -q -w "${line}" >/dev/null 2>&1 || true; done <"${RUN}/sysctl.before"
    rm -f "${RUN}/sysctl.before" "${RUN}/iptables.before" "${RUN}/netns.before"
  fi
  log "real node ${NODE} is down"
}

cmd_status() {
  if pid_alive "${RUN}/containerd.pid" && pid_alive "${RUN}/kubelet.pid" && node_ready \
    && pid_alive "${RUN}/kube-proxy.pid"; then
    echo "up: node ${NODE} (${NODE_IP}) Ready, kubelet and kube-proxy ${K8S_VERSION}"
    return 0
  fi
  echo "down: real node ${NODE} is not running"
  return 1
}

cmd_env() {
  echo "NODE=${NODE}"
  echo "NODE_IP=${NODE_IP}"
  echo "TAINT_KEY=${TAINT_KEY}"
  echo "POD_CIDR=${POD_CIDR}"
  echo "POD_GATEWAY=${POD_GATEWAY}"
  echo "IMAGE=${IMAGE}"
  echo "PAUSE_IMAGE=${PAUSE_IMAGE}"
  echo "CONTAINERD_ADDRESS=${CONTAINERD_SOCK}"
  echo "KUBELET_PID_FILE=${RUN}/kubelet.pid"
}

# One up/down at a time; the daemons must not inherit the lock's fd (closed with 8>&-).
locked() {
  mkdir -p "${RN}"
  exec 8>"${RN}/.lock"
  flock 8
  "$@"
}

case "${1:-}" in
  up) locked cmd_up ;;
  down) locked cmd_down ;;
  status) cmd_status ;;
  image) locked cmd_image ;;
  image-full) cmd_image_full ;;
  psql-image) locked cmd_psql_image ;;
  env) cmd_env ;;
  *)
    echo "usage: $0 up|down|status|image|image-full|psql-image|env" >&2
    exit 2
    ;;
esac
