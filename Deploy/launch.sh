#!/usr/bin/env bash
# The cluster on real machines: one mpirun over the machines of a hostfile, over TCP.
#
#   Deploy/launch.sh --hostfile FILE [--subnet CIDR] [--np N] -- MOE_ARGS...
#   Deploy/launch.sh --hostfile Deploy/hostfile.example --subnet 10.0.0.0/24 -- bench --preset medium --batch 8
#
# - Every machine needs the same build of moe at the same path (this checkout's .build/release/moe, or MOE=path)
#   and passwordless ssh from this one; OpenMPI starts its daemons over ssh.
# - --np defaults to the hostfile's slots added up; ranks are placed by slot, one OpenBLAS thread pool each.
# - --subnet restricts MPI's TCP traffic (and OpenMPI's own) to that network, as a cluster with several
#   interfaces needs; without it OpenMPI picks the interfaces.
# - Goes through Scripts/mpirun.sh (a session folder of its own per launch). Exit status: mpirun's; 2 for bad
#   arguments.
# - For `serve`, SIGTERM (Slurm's and Kubernetes' stop) drains: it reaches rank 0 as SIGUSR1, which stops taking
#   requests, finishes those in flight and exits 0.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
hostfile="" subnet="" np=""
usage() { sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }
while [ $# -gt 0 ]; do
    case "$1" in
        --hostfile) hostfile=${2:-}; shift 2 || usage ;;
        --subnet) subnet=${2:-}; shift 2 || usage ;;
        --np) np=${2:-}; shift 2 || usage ;;
        --) shift; break ;;
        -h|--help) usage ;;
        *) echo "launch: unknown option '$1' (moe's arguments go after --)" >&2; exit 2 ;;
    esac
done
[ -n "$hostfile" ] || { echo "launch: --hostfile is required" >&2; exit 2; }
[ -r "$hostfile" ] || { echo "launch: $hostfile: no such file" >&2; exit 2; }
[ $# -gt 0 ] || { echo "launch: nothing to run: give moe's arguments after --" >&2; exit 2; }
slots=$(awk '!/^[[:space:]]*(#|$)/ { n = 1; for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) n = substr($i, 7); s += n } END { print s + 0 }' "$hostfile")
[ "$slots" -gt 0 ] || { echo "launch: $hostfile names no machine" >&2; exit 2; }
np=${np:-$slots}
[[ "$np" =~ ^[1-9][0-9]*$ ]] || { echo "launch: --np must be a positive integer, not '$np'" >&2; exit 2; }
[ -z "$subnet" ] || [[ "$subnet" =~ ^[0-9.]+/[0-9]+$ ]] || { echo "launch: --subnet takes a CIDR such as 10.0.0.0/24, not '$subnet'" >&2; exit 2; }
moe=${MOE:-$root/.build/release/moe}
[ -x "$moe" ] || { echo "launch: $moe is not built (swift build -c release --product moe)" >&2; exit 2; }
options=(--hostfile "$hostfile" -np "$np" --map-by slot --bind-to none --mca btl self,vader,tcp)
[ -z "$subnet" ] || options+=(--mca btl_tcp_if_include "$subnet" --mca oob_tcp_if_include "$subnet")
export MOE_MPIRUN_NO_OVERSUBSCRIBE=1
[ "$1" != serve ] || export MOE_DRAIN_ON_TERM=1
exec "$root/Scripts/mpirun.sh" "${options[@]}" "$moe" "$@"
