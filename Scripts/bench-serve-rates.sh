#!/usr/bin/env bash
# Throughput and latency against request rate: starts `moe serve` (one process, or under mpirun with RANKS), runs
# `moe bench serve` at each rate (Poisson arrivals) and once with all requests at once, and writes OUT/rates.jsonl
# (one bench JSON line per rate), OUT/rates.md (a table) and, with matplotlib, OUT/rates.png: output tokens/s,
# and p50/p99 time per output token and time to first token, against the rate.
# Usage: Scripts/bench-serve-rates.sh [RATE ...]   (default 0.5 1 2 4 8)
# Environment: MODEL (serve's model flags, default "--preset medium"), SERVE (more serve flags), RANKS (mpirun
# ranks; unset: one process), PROMPTS (requests per rate, default 48), INPUT_LEN (128), OUTPUT_LEN (64),
# CONCURRENCY (the bench's --max-concurrency, default none), PORT (8400), OUT (.build/bench-serve-rates).
set -euo pipefail
cd "$(dirname "$0")/.."
rates=("$@")
[ ${#rates[@]} -gt 0 ] || rates=(0.5 1 2 4 8)
out=${OUT:-.build/bench-serve-rates}
port=${PORT:-8400}
mkdir -p "$out"
swift build -c release --product moe >&2
moe=.build/release/moe
read -r -a model <<< "${MODEL:---preset medium}"
read -r -a extra <<< "${SERVE:-}"
if [ -n "${RANKS:-}" ]; then
    Scripts/mpirun.sh -np "$RANKS" "$moe" serve "${model[@]}" --port "$port" "${extra[@]}" > "$out/serve.log" 2>&1 &
else
    "$moe" serve "${model[@]}" --port "$port" "${extra[@]}" > "$out/serve.log" 2>&1 &
fi
server=$!
trap 'kill -USR1 $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$port/health" > /dev/null && break
    kill -0 $server 2>/dev/null || { cat "$out/serve.log" >&2; exit 1; }
    sleep 1
done
curl -sf "http://127.0.0.1:$port/health" > /dev/null || { echo "the server did not become ready (see $out/serve.log)" >&2; exit 1; }
: > "$out/rates.jsonl"
concurrency=(); [ -z "${CONCURRENCY:-}" ] || concurrency=(--max-concurrency "$CONCURRENCY")
for rate in "${rates[@]}" inf; do
    flags=(); [ "$rate" = inf ] || flags=(--request-rate "$rate")
    "$moe" bench serve --base-url "http://127.0.0.1:$port" --num-prompts "${PROMPTS:-48}" "${flags[@]}" "${concurrency[@]}" \
        --input-len "${INPUT_LEN:-128}" --output-len "${OUTPUT_LEN:-64}" --format json | tail -1 >> "$out/rates.jsonl"
    echo "rate $rate done" >&2
done
python3 Scripts/plot_serve_rates.py "$out/rates.jsonl" "$out"
