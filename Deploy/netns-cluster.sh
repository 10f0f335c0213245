#!/usr/bin/env bash
# Several hosts on one machine: makes H network-namespace hosts joined through a bridge, runs one mpirun across
# them over TCP, and removes everything it made (also on failure or Ctrl-C). Needs root (ip netns, unshare).
#
#   Deploy/netns-cluster.sh [--hosts H] [--slots S] [--rate RATE] [--cores LIST] -- MPIRUN_ARGS...
#   Deploy/netns-cluster.sh --hosts 2 --rate 1gbit -- -np 2 .build/release/moe bench --preset medium --threads 1
#
# - Each host is a namespace with its own hostname (unshare --uts), an address 10.77.0.(i+1)/24 on a veth whose
#   other end sits on a bridge in a namespace of its own (the "switch"), and its own cores: with --cores
#   "0;1" (default: core i mod nproc) host i's processes are bound with taskset to the i-th list. OpenMPI is told
#   --bind-to none, or it binds every host's first rank to core 0.
# - --rate shapes every link in both directions with tbf (netem, for added delay, is absent from this kernel).
# - mpirun starts inside host 0's namespace through Scripts/mpirun.sh (its own session folder, no inherited MPI
#   variables), reaches the other hosts through an rsh agent that enters their namespace, and uses the TCP BTL
#   on the hosts' subnet only. --mca mpi_yield_when_idle 1: busy polling otherwise starves the kernel work that
#   moves veth packets (a ping-pong took 8 ms instead of 38 us).
# - Namespace names, host names (added to /etc/hosts, removed at exit) and the work folder are unique per run.
# Exit status: mpirun's (2 for bad arguments, 1 when setting up failed).
set -uo pipefail
hosts=2 slots=1 rate="" cores=""
usage() { sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --hosts) hosts=${2:-}; shift 2 || usage ;;
        --slots) slots=${2:-}; shift 2 || usage ;;
        --rate) rate=${2:-}; shift 2 || usage ;;
        --cores) cores=${2:-}; shift 2 || usage ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) echo "netns-cluster: unknown option '$1' (mpirun's arguments go after --)" >&2; exit 2 ;;
    esac
done
[[ "$hosts" =~ ^[1-9][0-9]?$ ]] || { echo "netns-cluster: --hosts must be 1-99, not '$hosts'" >&2; exit 2; }
[[ "$slots" =~ ^[1-9][0-9]*$ ]] || { echo "netns-cluster: --slots must be a positive integer, not '$slots'" >&2; exit 2; }
[ -z "$rate" ] || [[ "$rate" =~ ^[0-9.]+[kmg]?bit$ ]] || { echo "netns-cluster: --rate takes a tc rate such as 10gbit or 500mbit, not '$rate'" >&2; exit 2; }
[ $# -gt 0 ] || { echo "netns-cluster: nothing to run: give mpirun's arguments after --" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "netns-cluster: needs root (ip netns, unshare --uts)" >&2; exit 1; }
for tool in ip unshare taskset mpirun; do
    command -v "$tool" >/dev/null || { echo "netns-cluster: '$tool' is not installed" >&2; exit 1; }
done
IFS=';' read -r -a corelist <<< "$cores"
if [ -z "$cores" ]; then corelist=(); for ((i = 0; i < hosts; i++)); do corelist+=("$((i % $(nproc)))"); done; fi
[ "${#corelist[@]}" -eq "$hosts" ] || { echo "netns-cluster: --cores has ${#corelist[@]} lists for $hosts hosts" >&2; exit 2; }

root=$(cd "$(dirname "$0")/.." && pwd)
id=$(printf '%x%04x' "$$" "$RANDOM" | tail -c 8)   # short: interface names have at most 15 characters
work=$(mktemp -d "/tmp/moe-netns-$id-XXXX")
subnet=10.77.0.0/24
switch="moe$id-sw"
names=()
for ((i = 0; i < hosts; i++)); do names+=("moe$id-h$i"); done
marker="# moe netns-cluster $id"

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for ns in "${names[@]}" "$switch"; do
        if ip netns list | grep -qw "$ns"; then
            ip netns pids "$ns" 2>/dev/null | xargs -r kill -TERM 2>/dev/null
        fi
    done
    for _ in $(seq 50); do   # up to 5 s for mpirun to end its ranks and remove its session folder
        local left=0
        for ns in "${names[@]}"; do [ -z "$(ip netns pids "$ns" 2>/dev/null)" ] || left=1; done
        [ "$left" = 0 ] && break
        sleep 0.1
    done
    for ns in "${names[@]}" "$switch"; do
        if ip netns list | grep -qw "$ns"; then
            ip netns pids "$ns" 2>/dev/null | xargs -r kill -KILL 2>/dev/null
            ip netns del "$ns" 2>/dev/null
        fi
    done
    if grep -q "$marker" /etc/hosts 2>/dev/null; then
        (flock 9; grep -v "$marker" /etc/hosts > "$work/hosts" && cat "$work/hosts" > /etc/hosts) 9>/run/lock/moe-netns-hosts.lock
    fi
    rm -rf "$work"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail() { echo "netns-cluster: $*" >&2; exit 1; }
ip netns add "$switch" || fail "cannot make namespace $switch"
ip -n "$switch" link add br0 type bridge && ip -n "$switch" link set br0 up && ip -n "$switch" link set lo up || fail "cannot make the bridge"
for ((i = 0; i < hosts; i++)); do
    ns=${names[$i]}
    ip netns add "$ns" || fail "cannot make namespace $ns"
    ip link add "v$id$i" type veth peer name "p$id$i" || fail "cannot make a veth pair"
    ip link set "v$id$i" netns "$ns" && ip link set "p$id$i" netns "$switch" || fail "cannot move the veth pair"
    ip -n "$ns" link set "v$id$i" name eth0
    ip -n "$ns" addr add "10.77.0.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up && ip -n "$ns" link set lo up
    ip -n "$switch" link set "p$id$i" master br0 && ip -n "$switch" link set "p$id$i" up || fail "cannot join $ns to the bridge"
    if [ -n "$rate" ]; then
        ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "$rate" burst 1mb latency 10ms || fail "tc tbf on $ns"
        ip netns exec "$switch" tc qdisc add dev "p$id$i" root tbf rate "$rate" burst 1mb latency 10ms || fail "tc tbf on the switch"
    fi
    echo "${names[$i]} slots=$slots" >> "$work/hostfile"
    echo "${corelist[$i]}" > "$work/cores-${names[$i]}"
done
(flock 9; for ((i = 0; i < hosts; i++)); do echo "10.77.0.$((i + 1)) ${names[$i]} $marker"; done >> /etc/hosts) 9>/run/lock/moe-netns-hosts.lock \
    || fail "cannot add the hosts to /etc/hosts"

# The rsh agent: mpirun calls it as `AGENT HOST COMMAND...` (ssh's shape) to start a daemon on HOST; the command's
# words are joined and read by a shell there, as ssh does.
cat > "$work/agent" <<EOF
#!/bin/sh
host=\$1; shift
exec ip netns exec "\$host" unshare --uts /bin/sh -c 'hostname "\$1"; cores=\$2; shift 2; exec taskset -c "\$cores" /bin/sh -c "\$*"' \\
    sh "\$host" "\$(cat "$work/cores-\$host")" "\$@"
EOF
chmod +x "$work/agent"

first=${names[0]}
export MOE_MPIRUN_TMPDIR=$work   # the session folder goes with the work folder, however the run ends
ip netns exec "$first" unshare --uts /bin/bash -c 'hostname "$1"; cores=$2; shift 2; exec taskset -c "$cores" "$@"' \
    bash "$first" "${corelist[0]}" "$root/Scripts/mpirun.sh" \
    --hostfile "$work/hostfile" --mca plm_rsh_agent "$work/agent" --bind-to none \
    --mca btl self,vader,tcp --mca btl_tcp_if_include "$subnet" --mca oob_tcp_if_include "$subnet" \
    --mca mpi_yield_when_idle 1 "$@" <&0 &
wait $!
