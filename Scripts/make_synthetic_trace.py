"""Write a synthetic routing trace in moe trace's JSONL form, for planner speed checks.

Routing follows a Markov chain: each expert of layer l prefers a few experts of layer l+1, so good placements
exist. Run: python3 Scripts/make_synthetic_trace.py OUT.jsonl [--experts 64] [--layers 24] [--tokens 1500] [--seed 1]
"""
import argparse, json, random

ap = argparse.ArgumentParser()
ap.add_argument("out")
ap.add_argument("--experts", type=int, default=64)
ap.add_argument("--layers", type=int, default=24)
ap.add_argument("--tokens", type=int, default=1500)
ap.add_argument("--top-k", type=int, default=2)
ap.add_argument("--seed", type=int, default=1)
a = ap.parse_args()
rng = random.Random(a.seed)
E, L, k = a.experts, a.layers, a.top_k
prefer = [[rng.sample(range(E), 4) for _ in range(E)] for _ in range(L)]
with open(a.out, "w") as out:
    for t in range(a.tokens):
        e = rng.randrange(E)
        for l in range(L):
            chosen = [e]
            while len(chosen) < k:
                c = rng.randrange(E)
                if c not in chosen: chosen.append(c)
            w = 0.5 + rng.random() / 2
            weights = [round(w, 4)] + [round((1 - w) / (k - 1), 4)] * (k - 1)
            out.write(json.dumps({"sequence": t // 100, "token": t % 100, "layer": l, "experts": chosen, "weights": weights}) + "\n")
            e = rng.choice(prefer[l][e]) if rng.random() < 0.7 else rng.randrange(E)
