import COpenBLAS

/// A lower bound on the cost of any placement, cheap enough for instances too large for the ILP.
///
/// The cost is the hop-weighted total minus the mass a placement keeps on a rank (and, across nodes, on a node), so
/// an upper bound on the kept mass of every layer pair (and every layer's co-activation) gives a lower bound. Each
/// kept mass is bounded two ways and the smaller is used:
/// - degrees: between layers l and l+1 an expert keeps, on its own rank, at most its `capacity` heaviest
///   transitions (that rank holds no more experts of the other layer), and on its node at most its
///   `capacity · ranksPerNode` heaviest; the same holds from layer l+1's side.
/// - spectrum: a grouping of each layer into G groups of c experts keeps `Σ_r 1_{A_r}ᵀ C 1_{B_r}`. Removing row
///   and column means from C changes that by a constant (T/G for a matrix of total T), and the normalised group
///   indicators, less their common component, have singular values at most 1 and rank G−1, so von Neumann's trace
///   inequality bounds the rest by c times the sum of the G−1 largest singular values of the centred C. Groups
///   with room to spare (G·c > E) are filled with experts that route nowhere (zero rows and columns).
public enum CombinatorialBound {
    public static func lowerBound(_ p: PlacementProblem) -> Double {
        let s = p.statistics, e = s.experts
        let perNode = p.objective.ranksPerNode, nodes = max(p.ranks / perNode, 1), multiNode = nodes > 1
        let hopFar = multiNode ? 2.0 : 1.0
        // Kept mass of `matrix` when each group holds `size` experts of each side and there are `groups` groups.
        func kept(_ matrix: [Double], size: Int, groups: Int) -> Double {
            let total = matrix.reduce(0, +)
            return min(total, degreeBound(matrix, experts: e, size: size), spectralBound(matrix, experts: e, size: size, groups: groups))
        }
        var bound = 0.0
        for l in 0..<(s.layers - 1) {
            let c = s.transitions[l]
            var k = kept(c, size: p.capacity, groups: p.ranks)
            if multiNode { k += kept(c, size: p.capacity * perNode, groups: nodes) }
            bound += max(c.reduce(0, +) * hopFar - k, 0)
        }
        let lambda = p.objective.coactivationWeight
        if lambda > 0 {
            for l in 0..<s.layers {
                // Symmetric with a zero diagonal: a group keeps half its block's sum, and an expert at most its
                // capacity − 1 partners.
                let a = s.coactivation[l]
                func keptPairs(size: Int, groups: Int) -> Double {
                    min(a.reduce(0, +), degreeBound(a, experts: e, size: size - 1), spectralBound(a, experts: e, size: size, groups: groups)) / 2
                }
                var k = keptPairs(size: p.capacity, groups: p.ranks)
                if multiNode { k += keptPairs(size: p.capacity * perNode, groups: nodes) }
                bound += lambda * max(a.reduce(0, +) / 2 * hopFar - k, 0)
            }
        }
        return max(bound, 0)
    }

    /// Each row keeps at most its `size` heaviest entries, and so does each column: the smaller of the two sums.
    static func degreeBound(_ m: [Double], experts e: Int, size: Int) -> Double {
        func topSum(_ values: [Double]) -> Double { values.sorted(by: >).prefix(max(size, 0)).reduce(0, +) }
        let rows = (0..<e).reduce(0.0) { acc, a in acc + topSum(Array(m[(a * e)..<((a + 1) * e)])) }
        let cols = (0..<e).reduce(0.0) { acc, b in acc + topSum((0..<e).map { m[$0 * e + b] }) }
        return min(rows, cols)
    }

    /// T/G + size · Σ_{i<G} σ_i(centred m): the spectral bound above. When the groups have room for more than the
    /// E experts, m is padded with zero rows and columns to size × groups: a grouping with spare room becomes one
    /// with exactly `size` per group by filling it with these, keeping the same mass, so the bound still holds.
    /// Infinite (no bound) when the groups cannot hold the experts or LAPACK fails.
    static func spectralBound(_ matrix: [Double], experts n: Int, size: Int, groups: Int) -> Double {
        guard groups >= 1, size >= 1, size * groups >= n else { return .infinity }
        let e = size * groups
        var m = matrix
        if e > n {
            m = [Double](repeating: 0, count: e * e)
            for a in 0..<n { for b in 0..<n { m[a * e + b] = matrix[a * n + b] } }
        }
        let total = m.reduce(0, +)
        guard groups > 1 else { return total }
        var rowMean = [Double](repeating: 0, count: e), colMean = rowMean
        for a in 0..<e { for b in 0..<e { rowMean[a] += m[a * e + b] / Double(e); colMean[b] += m[a * e + b] / Double(e) } }
        let mean = total / Double(e * e)
        // Column-major for LAPACK: the transpose has the same singular values, so the row-major array is used as is.
        var centred = [Double](repeating: 0, count: e * e)
        for a in 0..<e { for b in 0..<e { centred[a * e + b] = m[a * e + b] - rowMean[a] - colMean[b] + mean } }
        guard let sigma = singularValues(&centred, rows: e, cols: e) else { return .infinity }
        return total / Double(groups) + Double(size) * sigma.prefix(groups - 1).reduce(0, +)
    }

    /// Singular values, largest first, of a `rows × cols` column-major matrix (overwritten), by LAPACK's dgesvd.
    static func singularValues(_ a: inout [Double], rows: Int, cols: Int) -> [Double]? {
        var m = Int32(rows), n = Int32(cols), lda = Int32(rows), one: Int32 = 1, info: Int32 = 0
        var s = [Double](repeating: 0, count: min(rows, cols)), u = [0.0], vt = [0.0]
        var lwork: Int32 = -1, query = 0.0
        dgesvd_("N", "N", &m, &n, &a, &lda, &s, &u, &one, &vt, &one, &query, &lwork, &info, 1, 1)
        guard info == 0 else { return nil }
        lwork = Int32(query)
        var work = [Double](repeating: 0, count: max(Int(lwork), 1))
        dgesvd_("N", "N", &m, &n, &a, &lda, &s, &u, &one, &vt, &one, &work, &lwork, &info, 1, 1)
        return info == 0 ? s : nil
    }
}
