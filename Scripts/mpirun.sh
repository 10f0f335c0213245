#!/usr/bin/env bash
# `mpirun` as every script of this project starts it: Scripts/mpirun.sh [mpirun options] -np G PROGRAM ARGS...
# - inside an MPI job (PMIX_RANK or OMPI_COMM_WORLD_SIZE set) the child gets none of the job's OMPI_*, PMIX_*,
#   OPAL_* variables (a nested mpirun would take itself for one of its ranks); outside one they stay, since
#   launchers such as Kubeflow's MPI Operator configure mpirun through OMPI_MCA_* variables;
# - the launch gets its own OpenMPI session directory (--mca orte_tmpdir_base on a fresh folder, removed at exit):
#   launches that start and end beside each other otherwise race to make and remove the shared per-user
#   <tmp>/ompi.<host>.<uid>, and one fails with "A call to mkdir was unable to create the desired directory";
#   MOE_MPIRUN_TMPDIR puts that folder elsewhere than /tmp (Deploy/netns-cluster.sh: inside its own work folder,
#   so the folder goes with it even if this wrapper is killed);
# - as root it passes --allow-run-as-root, and --oversubscribe unless MOE_MPIRUN_NO_OVERSUBSCRIBE=1.
# - SIGUSR1 goes to mpirun, which forwards it to the ranks (`moe serve` drains on it). With MOE_DRAIN_ON_TERM=1
#   SIGTERM (what Slurm and Kubernetes send) becomes SIGUSR1 too: OpenMPI 4.1's mpirun would abort its ranks on
#   SIGTERM, losing the requests in flight.
# Exit status: mpirun's. SIGINT/SIGTERM go to mpirun, which ends its ranks; the session folder goes either way.
set -uo pipefail
if [ -n "${PMIX_RANK:-}${OMPI_COMM_WORLD_SIZE:-}" ]; then
    for v in $(env | sed -n 's/^\(\(OMPI\|PMIX\|OPAL\)_[A-Za-z0-9_]*\)=.*/\1/p'); do unset "$v"; done
fi
session=$(mktemp -d "${MOE_MPIRUN_TMPDIR:-/tmp}/moe-mpi-XXXXXX") || exit 1
options=(--mca orte_tmpdir_base "$session")
[ "$(id -u)" -ne 0 ] || options+=(--allow-run-as-root)
[ "${MOE_MPIRUN_NO_OVERSUBSCRIBE:-0}" = 1 ] || options+=(--oversubscribe)
# Explicit <&0: a background command of a script otherwise reads /dev/null (mpirun forwards stdin to rank 0).
mpirun "${options[@]}" "$@" <&0 &
pid=$!
trap 'kill -TERM "$pid" 2>/dev/null' INT
trap 'kill -USR1 "$pid" 2>/dev/null' USR1
if [ "${MOE_DRAIN_ON_TERM:-0}" = 1 ]; then
    trap 'kill -USR1 "$pid" 2>/dev/null' TERM
else
    trap 'kill -TERM "$pid" 2>/dev/null' TERM
fi
# `wait` returns early when a trapped signal arrives: wait again until mpirun has really gone.
while :; do
    wait "$pid"; status=$?
    kill -0 "$pid" 2>/dev/null || break
done
rm -rf "$session"
exit "$status"
