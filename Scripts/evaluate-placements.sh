#!/usr/bin/env bash
# Out-of-sample placement quality on the real Mixtral-8x7B traces of ../shared/data (not shipped with the project):
# plan on problem 0 of both traces and evaluate on problem 1, and the reverse, at 4 and 8 ranks, beside ExFlow's
# published placements and the contiguous baseline. Metric: fraction of top-1 transitions (layer l -> l+1) whose
# experts sit on different ranks. Prints a Markdown table; its last row per rank count is moe plan's saving over
# ExFlow's plan with the block-bootstrap standard deviation of the test half (`moe plan evaluate --against`) and
# the saving on each test sequence. Usage: Scripts/evaluate-placements.sh [SHARED_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${1:-../shared}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
swift build -c release --product moe >&2
moe=.build/release/moe
for p in 0 1; do
    python3 - "$shared/data/traces" "$p" > "$work/half$p.jsonl" <<'PY'
import json, sys
for name in ("humaneval_2_routing.jsonl", "gsm8k_2_routing.jsonl"):
    for line in open(f"{sys.argv[1]}/{name}"):
        if json.loads(line)["problem_id"] == int(sys.argv[2]): sys.stdout.write(line)
PY
done
saving() { "$moe" plan evaluate --plan "$1" --against "$2" --trace "$3" --json | tail -n 1 | python3 -c '
import json, sys
a = json.load(sys.stdin)["against"]
parts = ", ".join("%s %+.4f" % (p["sequence"].split("/")[0], p["saving"]) for p in a["saving_per_sequence"])
print("%+.4f ± %.4f (%s)" % (a["saving_top1"], a["saving_sd"], parts))'; }
top1() { "$moe" plan evaluate --plan "$1" --trace "$2" --json | tail -n 1 | python3 -c 'import json,sys; print("%.4f" % json.load(sys.stdin)["cross_rank_top1"])'; }
echo "| ranks | placement | plan p0, test p1 | plan p1, test p0 |"
echo "|---|---|---|---|"
for g in 4 8; do
    "$moe" plan import --exflow "$shared/data/placements/exflow-mixtral-8x7b-${g}gpu.csv" --output "$work/exflow$g.json" >/dev/null
    "$moe" plan --trace "$work/half0.jsonl" --ranks "$g" --solver contiguous --output "$work/contiguous$g.json" >/dev/null 2>&1
    for tr in 0 1; do "$moe" plan --trace "$work/half$tr.jsonl" --ranks "$g" --experts 8 --output "$work/plan$g-$tr.json" >/dev/null 2>&1; done
    echo "| $g | contiguous | $(top1 "$work/contiguous$g.json" "$work/half1.jsonl") | $(top1 "$work/contiguous$g.json" "$work/half0.jsonl") |"
    echo "| $g | ExFlow (published) | $(top1 "$work/exflow$g.json" "$work/half1.jsonl") | $(top1 "$work/exflow$g.json" "$work/half0.jsonl") |"
    echo "| $g | moe plan (auto) | $(top1 "$work/plan$g-0.json" "$work/half1.jsonl") | $(top1 "$work/plan$g-1.json" "$work/half0.jsonl") |"
    echo "| $g | saving over ExFlow ± sd (per test sequence) | $(saving "$work/plan$g-0.json" "$work/exflow$g.json" "$work/half1.jsonl") | $(saving "$work/plan$g-1.json" "$work/exflow$g.json" "$work/half0.jsonl") |"
done
