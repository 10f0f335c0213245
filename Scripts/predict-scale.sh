#!/usr/bin/env bash
# Scale on paper: the step-time model, calibrated on this machine's link and cores (CALIBRATION, from
# `moe calibrate`), predicts decode for Mixtral-8x7B (real MT-Bench routing, writing category, plans from the
# other three) and Qwen3-30B-A3B (synthetic Markov routing: unvalidated) on 8-64 ranks over 2-16 nodes with
# 10-100 Gbit/s links. Each rank is taken to stream weights as one core here does: a real node's ranks stream
# faster, which shifts the balance toward communication. Prints a Markdown table (and writes OUT/scale.md) of
# tokens/s per mode and which wins; writes OUT/scale.png with matplotlib when present.
# Usage: Scripts/predict-scale.sh CALIBRATION.json [SHARED_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
calibration=${1:?usage: Scripts/predict-scale.sh CALIBRATION.json [SHARED_DIR]}
shared=${2:-../shared}
out=${OUT:-.build/predict-scale}
mkdir -p "$out"
swift build -c release --product moe >&2
moe=.build/release/moe
mt=$shared/data/traces/mtbench
train=(--trace "$mt/mtbench_coding.jsonl" --trace "$mt/mtbench_humanities.jsonl" --trace "$mt/mtbench_math.jsonl")
[ -f "$out/qwen3.jsonl" ] || python3 Scripts/make_synthetic_trace.py "$out/qwen3.jsonl" --experts 128 --layers 48 --top-k 8 --tokens 800 --seed 3
rows=$out/scale.jsonl
: > "$rows"
predict() {  # shape trace plan ranks nodes gbps batch
    local plan=(); [ "$3" = contiguous ] || plan=(--placement "$3")
    "$moe" predict --shape "$1" --calibration "$calibration" --trace "$2" "${plan[@]}" --ranks "$4" --nodes "$5" --link-gbps "$6" \
        --batch "$7" --prompt-len 32 --gen-len 16 --format json |
        python3 -c 'import json,sys; [print(json.dumps(dict(json.loads(l), shape=sys.argv[1], link_gbps=float(sys.argv[2]), plan=sys.argv[3]))) for l in sys.stdin]' \
            "$1" "$6" "$([ "$3" = contiguous ] && echo contiguous || echo planned)" >> "$rows"
}
for nodes in 2 4 8; do
    plan=$out/mixtral-8r-$nodes.json
    [ -f "$plan" ] || "$moe" plan "${train[@]}" --ranks 8 --nodes "$nodes" --default-weights 0.65,0.35 --time-limit 30 --output "$plan" >&2
    for gbps in 10 100; do for batch in 1 8 32; do
        predict mixtral-8x7b "$mt/mtbench_writing.jsonl" "$plan" 8 "$nodes" "$gbps" "$batch"
    done; done
done
for ranks_nodes in "8 2" "16 4" "32 8" "64 16"; do
    read -r ranks nodes <<< "$ranks_nodes"
    plan=$out/qwen3-$ranks-$nodes.json
    [ -f "$plan" ] || "$moe" plan --trace "$out/qwen3.jsonl" --ranks "$ranks" --nodes "$nodes" --solver bisect --time-limit 30 --output "$plan" >&2
    for gbps in 10 100; do for batch in 1 8 32; do
        predict qwen3-30b-a3b "$out/qwen3.jsonl" "$plan" "$ranks" "$nodes" "$gbps" "$batch"
    done; done
done
python3 - "$rows" "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
cells = {}
for r in rows:
    cells.setdefault((r["shape"], r["ranks"], r["nodes"], r["link_gbps"], r["batch"]), {})[r["dispatch"]] = r
lines = ["| model | ranks / nodes | link | batch | ep2 tok/s | coherent tok/s | winner | coherent p2p layers / step | communication share (ep2, coherent) |",
         "|---|---|---|---|---|---|---|---|---|"]
for (shape, ranks, nodes, gbps, batch), m in sorted(cells.items()):
    e, c = m["ep2"], m["coherent"]
    win = "coherent %.2fx" % (c["decode_tokens_per_s"] / e["decode_tokens_per_s"]) if c["decode_tokens_per_s"] > e["decode_tokens_per_s"] else \
          "ep2 %.2fx" % (e["decode_tokens_per_s"] / c["decode_tokens_per_s"])
    lines.append("| %s | %d / %d | %g Gbit/s | %d | %.1f | %.1f | %s | %.1f | %.0f%%, %.0f%% |" % (
        shape, ranks, nodes, gbps, batch, e["decode_tokens_per_s"], c["decode_tokens_per_s"], win,
        c["point_to_point_layers_per_step"], 100 * e["communication_fraction"], 100 * c["communication_fraction"]))
table = "\n".join(lines)
print(table)
open(f"{sys.argv[2]}/scale.md", "w").write(table + "\n")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    print("(no matplotlib, so no plot: python3 -m pip install matplotlib)", file=sys.stderr)
    sys.exit(0)
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
for ax, shape in zip(axes, ("mixtral-8x7b", "qwen3-30b-a3b")):
    keys = sorted(k for k in cells if k[0] == shape)
    ratio = [cells[k]["coherent"]["decode_tokens_per_s"] / cells[k]["ep2"]["decode_tokens_per_s"] for k in keys]
    ax.bar(range(len(keys)), ratio, color=["C1" if r > 1 else "C0" for r in ratio])
    ax.axhline(1, color="k", lw=0.8)
    ax.set_xticks(range(len(keys)), ["%d/%d %gG b%d" % k[1:] for k in keys], rotation=80, fontsize=6)
    ax.set_ylabel("coherent / ep2 predicted tokens/s")
    ax.set_title(shape + (" (synthetic routing, unvalidated)" if shape.startswith("qwen3") else " (MT-Bench routing)"))
fig.tight_layout()
fig.savefig(f"{sys.argv[2]}/scale.png", dpi=110)
PY
