#!/usr/bin/env bash
# The main job: install what is missing, build in release mode, record the routing of the built-in synthetic
# `medium` model (Mixtral-shaped, 354 M parameters, made in memory: no download) with `moe trace` on the cluster
# (contiguous placement), plan an expert placement from it with `moe plan`, and run the cluster with mpirun on that
# placement: RANKS ranks (default 2),
# coherent (ExFlow) dispatch, 64 generated tokens from a text prompt. The prompt is encoded, and the result decoded,
# with the Mixtral tokenizer moe ships (the preset has Mixtral's 32,000-token vocabulary); the synthetic weights are
# random, so the text is noise. The model routes at random too, so the plan here is a demonstration; real gains come
# from real traces (README, "Placement").
# Every mpirun goes through Scripts/mpirun.sh (its own OpenMPI session folder, no inherited MPI variables).
# Environment: RANKS, DISPATCH (coherent or ep2), PROMPT. Extra arguments go to `moe generate`.
set -euo pipefail
cd "$(dirname "$0")/.."
Scripts/setup.sh
swift build -c release --product moe
moe=.build/release/moe
ranks=${RANKS:-2}
out=.build/run
mkdir -p "$out"
prompt=${PROMPT:-"The quick brown fox jumps over"}
Scripts/mpirun.sh -np "$ranks" "$moe" trace --preset medium --prompt "$prompt" --max-new-tokens 64 \
    --output "$out/trace.jsonl"
"$moe" plan --trace "$out/trace.jsonl" --ranks "$ranks" --experts 8 --output "$out/plan.json"
Scripts/mpirun.sh -np "$ranks" "$moe" generate --preset medium --placement "$out/plan.json" \
    --dispatch "${DISPATCH:-coherent}" --prompt "$prompt" --max-new-tokens 64 --temperature 0 --json "$@"
