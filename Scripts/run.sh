#!/usr/bin/env bash
# The main job: install what is missing, build in release mode, and run the cluster with mpirun: 2 ranks, each
# holding half of the experts of the built-in synthetic `medium` model (Mixtral-shaped, 354 M parameters, made in
# memory: no download), in coherent (ExFlow) dispatch, generating 64 tokens.
# Environment: RANKS (default 2), DISPATCH (coherent or ep2). Extra arguments go to `moe generate`,
# e.g. Scripts/run.sh --max-new-tokens 128 --temperature 0.8
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/setup.sh
swift build -c release --product moe
root=()
[ "$(id -u)" -ne 0 ] || root=(--allow-run-as-root)
mpirun "${root[@]}" --oversubscribe -np "${RANKS:-2}" .build/release/moe generate --preset medium \
    --dispatch "${DISPATCH:-coherent}" --prompt-ids 1,415,2936,9060,285,1142 --max-new-tokens 64 --temperature 0 --json "$@"
