#!/usr/bin/env python3
"""Table and plot of `moe bench serve` lines against request rate (Scripts/bench-serve-rates.sh).

Usage: plot_serve_rates.py RATES.jsonl OUT_DIR
Writes OUT_DIR/rates.md and, when matplotlib is installed, OUT_DIR/rates.png.
"""
import json
import sys


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
    if not rows:
        sys.exit(f"{sys.argv[1]}: no bench lines")
    lines = ["| rate req/s | completed | req/s | output tok/s | TTFT p50 / p99 ms | TPOT p50 / p99 ms | ITL p50 / p99 ms |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| {} | {} | {:.2f} | {:.1f} | {:.0f} / {:.0f} | {:.1f} / {:.1f} | {:.1f} / {:.1f} |".format(
            r["request_rate"], r["completed"], r["request_throughput"], r["output_throughput"],
            r["ttft_ms"]["p50"], r["ttft_ms"]["p99"], r["tpot_ms"]["p50"], r["tpot_ms"]["p99"],
            r["itl_ms"]["p50"], r["itl_ms"]["p99"]))
    table = "\n".join(lines) + "\n"
    open(f"{sys.argv[2]}/rates.md", "w").write(table)
    print(table, end="")
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): no plot", file=sys.stderr)
        return
    # Rates as sent; "inf" (everything at once) is drawn at the measured request throughput, marked.
    finite = [r for r in rows if r["request_rate"] != "inf"]
    x = [float(r["request_rate"]) for r in finite]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4.2))
    a.plot(x, [r["output_throughput"] for r in finite], "o-", label="output tokens/s")
    a.set_xlabel("request rate (req/s, Poisson)")
    a.set_ylabel("output tokens/s")
    a.set_title("throughput")
    for r in rows:
        if r["request_rate"] == "inf":
            a.axhline(r["output_throughput"], color="gray", linestyle=":", label="all at once")
    a.legend()
    for key, name in (("tpot_ms", "time per output token"), ("ttft_ms", "time to first token")):
        for q, style in (("p50", "o-"), ("p99", "s--")):
            b.plot(x, [r[key][q] for r in finite], style, label=f"{name} {q}")
    b.set_yscale("log")
    b.set_xlabel("request rate (req/s, Poisson)")
    b.set_ylabel("ms")
    b.set_title("latency")
    b.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{sys.argv[2]}/rates.png", dpi=110)
    print(f"wrote {sys.argv[2]}/rates.png", file=sys.stderr)


if __name__ == "__main__":
    main()
