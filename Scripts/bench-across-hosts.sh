#!/usr/bin/env bash
# The cluster across two namespace hosts (Deploy/netns-cluster.sh), one rank and one core each: decode tokens/s and
# bytes per token for each dispatch mode x placement x link x batch, on `medium-32` bf16 (Mixtral-8x7B's layer and
# expert counts) with real routing replayed out of sample: the plan is made from three MT-Bench categories and the
# fourth is replayed (ROUTING=spec: plan from MT-Bench, replay the speculative-moe traces, another domain).
# Runs are interleaved (every cell once per round, REPS rounds); prints a Markdown table of medians with their
# min-max spread, and writes every run (runs.jsonl), the table (table.md) and a plot (plot.png, matplotlib) to OUT.
# Needs root. Usage: Scripts/bench-across-hosts.sh [SHARED_DIR]
# Environment: REPS (5), BATCHES ("1 8"), MODES ("ep2 coherent"), PLACEMENTS ("contiguous planned"),
#   LINKS ("shm unshaped 10gbit 1gbit"; shm: the same 2 ranks on this host over shared memory, one core each), GEN_LEN (32), PROMPT_LEN (32), ROUTING (mtbench|spec), OUT (.build/bench-across-hosts),
#   MODEL (a model folder; default: medium-32 bf16 written once by moe init-model), EXTRA (more moe bench flags),
#   LEVERS ("exact"; any of exact, step-end (K/V rows in the step-end allgather instead of posted per layer),
#   per-rank (--combine per-rank), bf16-wire (--wire-dtype bf16), per-rank+bf16-wire): one cell each, interleaved.
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared}
reps=${REPS:-5} batches=${BATCHES:-"1 8"} modes=${MODES:-"ep2 coherent"} placements=${PLACEMENTS:-"contiguous planned"}
links=${LINKS:-"shm unshaped 10gbit 1gbit"} gen=${GEN_LEN:-32} prompt=${PROMPT_LEN:-32} routing=${ROUTING:-mtbench}
out=${OUT:-.build/bench-across-hosts} levers=${LEVERS:-exact}
mkdir -p "$out"
swift build -c release --product moe >&2
moe=$PWD/.build/release/moe
model=${MODEL:-.build/models/medium-32-bf16}
if [ ! -f "$model/config.json" ]; then
    echo "bench-across-hosts: writing $model (medium-32, bf16)" >&2
    "$moe" init-model --preset medium-32 --dtype bf16 --output "$model" >&2
fi
mt=$shared/data/traces/mtbench
case "$routing" in
    mtbench) train=("$mt/mtbench_coding.jsonl" "$mt/mtbench_humanities.jsonl" "$mt/mtbench_math.jsonl"); replay=$mt/mtbench_writing.jsonl ;;
    spec) train=("$mt"/mtbench_*.jsonl); replay=$out/spec.jsonl
          cat "$shared/data/traces/humaneval_2_routing.jsonl" "$shared/data/traces/gsm8k_2_routing.jsonl" > "$replay" ;;
    *) echo "bench-across-hosts: ROUTING must be mtbench or spec" >&2; exit 2 ;;
esac
if [[ " $placements " == *" planned "* ]] && [ ! -f "$out/plan-$routing.json" ]; then
    args=(); for t in "${train[@]}"; do args+=(--trace "$t"); done
    "$moe" plan "${args[@]}" --ranks 2 --default-weights 0.65,0.35 --output "$out/plan-$routing.json" >&2
fi
lever_flags() {
    case "$1" in
        exact) flags=() ;;
        step-end) flags=(--kv-replication step-end) ;;
        per-rank) flags=(--combine per-rank) ;;
        bf16-wire) flags=(--wire-dtype bf16) ;;
        per-rank+bf16-wire) flags=(--combine per-rank --wire-dtype bf16) ;;
        *) echo "bench-across-hosts: unknown lever '$1' (exact, step-end, per-rank, bf16-wire, per-rank+bf16-wire)" >&2; exit 2 ;;
    esac
}
for lever in $levers; do lever_flags "$lever"; done
launcher() {
    case "$1" in
        shm) launch=(Scripts/mpirun.sh --bind-to core --mca btl self,vader --mca mpi_yield_when_idle 1) ;;
        unshaped) launch=(Deploy/netns-cluster.sh --hosts 2 --cores "0;1" --) ;;
        *) launch=(Deploy/netns-cluster.sh --hosts 2 --cores "0;1" --rate "$1" --) ;;
    esac
}
# The step-time model's rates come from microbenchmarks, never from the runs below: every run measures them after
# its warm-up on its own experts (`bench --predict`; `auto` decides with them) and reports what the model predicts
# for its decode steps, given the routing they took. Once per link, `moe calibrate` writes them to a file as well,
# and `moe predict` gives the model's figure from that file alone (the second predicted column).
for link in $links; do
    launcher "$link"
    [ -f "$out/calibration-$link.json" ] || "${launch[@]}" -np 2 "$moe" calibrate --model "$model" --threads 1 --output "$out/calibration-$link.json" >&2
done
runs=$out/runs-$routing.jsonl
: > "$runs"
for ((round = 1; round <= reps; round++)); do
    for link in $links; do
        launcher "$link"
        for batch in $batches; do
            for placement in $placements; do
                plan=(); [ "$placement" = contiguous ] || plan=(--placement "$out/plan-$routing.json")
                for mode in $modes; do
                  for lever in $levers; do
                    [ "$mode" = ep2 ] && [ "$lever" = step-end ] && continue  # ep2 replicates no K/V
                    lever_flags "$lever"
                    # shellcheck disable=SC2086  # EXTRA is split into flags on purpose
                    line=$("${launch[@]}" -np 2 "$moe" bench --model "$model" \
                        --threads 1 --batch "$batch" --prompt-len "$prompt" --gen-len "$gen" --repetitions 1 --format json \
                        --dispatch "$mode" "${plan[@]}" --predict "${flags[@]}" --routing "replay:$replay" ${EXTRA:-} | tail -n 1)
                    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(link=sys.argv[2], plan=sys.argv[3], round=int(sys.argv[4]), lever=sys.argv[5]); print(json.dumps(r))' \
                        "$line" "$link" "$placement" "$round" "$lever" >> "$runs"
                    echo "round $round: $link batch $batch $placement $mode $lever: $(python3 -c 'import json,sys; r = json.loads(sys.argv[1]); print("%.1f tok/s (predicted %.1f)" % (r["decode_tokens_per_s"], r["predicted_decode_tokens_per_s"]))' "$line")" >&2
                  done
                done
            done
        done
    done
done
# What the step-time model predicts for each cell, from the calibration files alone.
predictions=$out/predictions-$routing.jsonl
: > "$predictions"
for link in $links; do
    for batch in $batches; do
        for placement in $placements; do
            plan=(); [ "$placement" = contiguous ] || plan=(--placement "$out/plan-$routing.json")
            "$moe" predict --model "$model" --calibration "$out/calibration-$link.json" --trace "$replay" "${plan[@]}" --ranks 2 \
                --nodes "$([ "$link" = shm ] && echo 1 || echo 2)" --batch "$batch" --prompt-len "$prompt" --gen-len "$gen" --format json |
                python3 -c 'import json,sys; [print(json.dumps(dict(json.loads(l), link=sys.argv[1], plan=sys.argv[2]))) for l in sys.stdin]' "$link" "$placement" >> "$predictions"
        done
    done
done
python3 - "$runs" "$out" "$routing" "$predictions" <<'PY'
import json, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
out, routing = sys.argv[2], sys.argv[3]
predicted = {}
for l in open(sys.argv[4]):
    p = json.loads(l)
    predicted[(p["link"], p["batch"], p["plan"], p["dispatch"])] = p["decode_tokens_per_s"]
for (link, batch, plan, mode) in list(predicted):
    if (link, batch, plan, "ep2") in predicted and (link, batch, plan, "coherent") in predicted:
        predicted[(link, batch, plan, "auto")] = max(predicted[(link, batch, plan, "ep2")], predicted[(link, batch, plan, "coherent")])
cells = {}
for r in runs:
    cells.setdefault((r["link"], r["batch"], r["plan"], r["dispatch"], r.get("lever", "exact")), []).append(r)
def med(rs, f): return statistics.median(f(r) for r in rs)
lines = ["| link | batch | placement | dispatch | lever | decode tok/s (min-max) | vs best ep2 | predicted in the run (error) | predicted from the file (error) | KB/token: dispatch, combine, p2p, allgather, K/V | K/V wait ms/step | p2p msgs / MoE layer | modes run |",
         "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
for (link, batch, plan, mode, lever), rs in sorted(cells.items(), key=lambda kv: (kv[0][0], kv[0][1], kv[0][2] != "contiguous", kv[0][3], kv[0][4])):
    tps = [r["decode_tokens_per_s"] for r in rs]
    best_ep2 = max((statistics.median(x["decode_tokens_per_s"] for x in v) for k, v in cells.items()
                    if k[0] == link and k[1] == batch and k[3] == "ep2"), default=None)
    kb = ", ".join("%.0f" % (med(rs, lambda r, k=k: r["cross_rank_bytes_per_token"].get(k, 0)) / 1e3) for k in ("dispatch", "combine", "point_to_point", "allgather", "kv_replication"))
    wait = med(rs, lambda r: r.get("kv_wait_ms_per_step", 0))
    p2p = med(rs, lambda r: r["collectives_per_moe_layer"]["point_to_point"])
    ran = rs[0].get("mode_steps", {})
    pred = predicted.get((link, batch, plan, mode)) if lever == "exact" else None
    inrun = med(rs, lambda r: r["predicted_decode_tokens_per_s"])
    def error(p): return "%.1f (%+.0f%%)" % (p, 100 * (p / statistics.median(tps) - 1)) if p else "-"
    lines.append("| %s | %d | %s | %s | %s | %.1f (%.1f-%.1f) | %s | %s | %s | %s | %.2f | %.2f | %s |" % (
        link, batch, plan, mode, lever, statistics.median(tps), min(tps), max(tps),
        "%.2fx" % (statistics.median(tps) / best_ep2) if best_ep2 else "-",
        error(inrun), error(pred), kb, wait, p2p,
        ", ".join("%s %d" % kv for kv in sorted(ran.items())) or "-"))
table = "\n".join(lines)
print(table)
open(f"{out}/table-{routing}.md", "w").write(table + "\n")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("(no matplotlib, so no plot: python3 -m pip install matplotlib)", file=sys.stderr)
    sys.exit(0)
keys = sorted(cells, key=lambda k: (k[1], k[0], k[2], k[3]))
labels = ["%s b%d %s %s%s" % (k[0], k[1], k[2][:4], k[3], "" if k[4] == "exact" else " " + k[4]) for k in keys]
fig, (a1, a2) = plt.subplots(2, 1, figsize=(max(8, len(keys) * 0.5), 8), sharex=True)
a1.bar(range(len(keys)), [statistics.median(r["decode_tokens_per_s"] for r in cells[k]) for k in keys],
       yerr=[[statistics.median(r["decode_tokens_per_s"] for r in cells[k]) - min(r["decode_tokens_per_s"] for r in cells[k]) for k in keys],
             [max(r["decode_tokens_per_s"] for r in cells[k]) - statistics.median(r["decode_tokens_per_s"] for r in cells[k]) for k in keys]],
       color=["C0" if k[3] == "ep2" else "C1" if k[3] == "coherent" else "C2" for k in keys])
a1.set_ylabel("decode tokens/s (median, min-max)")
bottom = [0.0] * len(keys)
for i, kind in enumerate(("dispatch", "combine", "point_to_point", "allgather", "kv_replication")):
    v = [statistics.median(r["cross_rank_bytes_per_token"].get(kind, 0) for r in cells[k]) / 1e3 for k in keys]
    a2.bar(range(len(keys)), v, bottom=bottom, label=kind, color="C%d" % (i + 4))
    bottom = [b + x for b, x in zip(bottom, v)]
a2.set_ylabel("KB crossing ranks per token")
a2.legend(loc="upper left", fontsize=7, ncol=4)
a2.set_xticks(range(len(keys)), labels, rotation=70, ha="right", fontsize=7)
fig.suptitle("medium-32 bf16, 2 namespace hosts x 1 rank, replay %s" % routing)
fig.tight_layout()
fig.savefig(f"{out}/plot-{routing}.png", dpi=110)
print(f"plot: {out}/plot-{routing}.png", file=sys.stderr)
PY
