/// A lower bound on the cost of any placement, cheap enough for instances too large for the ILP.
///
/// Between layers l and l+1 an expert a keeps, on its own rank, at most its `capacity` heaviest transitions
/// (that rank holds no more experts of layer l+1), and on its node at most its `capacity · ranksPerNode`
/// heaviest; the same holds from layer l+1's side, so the smaller of the two sums bounds the kept mass.
/// Within a layer, a pair kept on a rank counts for both its experts, so half of each expert's `capacity − 1`
/// heaviest co-activations bounds it. Cost = (hop-weighted total) − kept, so total − bound ≤ any cost.
public enum CombinatorialBound {
    public static func lowerBound(_ p: PlacementProblem) -> Double {
        let s = p.statistics, e = s.experts
        let perNode = p.objective.ranksPerNode, multiNode = p.ranks > perNode
        let hopFar = multiNode ? 2.0 : 1.0
        func topSum(_ values: [Double], _ k: Int) -> Double { values.sorted(by: >).prefix(max(k, 0)).reduce(0, +) }
        func keptBound(_ matrix: [Double], _ k: Int) -> Double {
            let rows = (0..<e).reduce(0.0) { acc, a in acc + topSum(Array(matrix[(a * e)..<((a + 1) * e)]), k) }
            let cols = (0..<e).reduce(0.0) { acc, b in acc + topSum((0..<e).map { matrix[$0 * e + b] }, k) }
            return min(rows, cols)
        }
        var bound = 0.0
        for l in 0..<(s.layers - 1) {
            let c = s.transitions[l]
            let total = c.reduce(0, +) * hopFar
            var kept = keptBound(c, p.capacity)
            if multiNode { kept += keptBound(c, p.capacity * perNode) }
            bound += total - min(kept, total)
        }
        let lambda = p.objective.coactivationWeight
        if lambda > 0 {
            for l in 0..<s.layers {
                let a = s.coactivation[l]
                let total = a.reduce(0, +) / 2 * hopFar  // symmetric: each pair appears twice
                var kept = (0..<e).reduce(0.0) { $0 + topSum(Array(a[($1 * e)..<(($1 + 1) * e)]), p.capacity - 1) } / 2
                if multiNode { kept += (0..<e).reduce(0.0) { $0 + topSum(Array(a[($1 * e)..<(($1 + 1) * e)]), p.capacity * perNode - 1) } / 2 }
                bound += lambda * (total - min(kept, total))
            }
        }
        return max(bound, 0)
    }
}
