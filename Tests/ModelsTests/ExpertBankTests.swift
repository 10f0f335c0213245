import Foundation
import Kernels
@testable import Models
import Testing

/// Deterministic pseudo-random floats in [-1, 1) (the kernels' tests have their own copy).
private func noise(_ n: Int, seed: UInt64) -> [Float] {
    var s = seed &+ 0x9E37_79B9_7F4A_7C15
    return (0..<n).map { _ in
        s = s &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int64(bitPattern: s) >> 40) / Float(1 << 23)
    }
}

/// Owns bf16 bits that a weight matrix points into.
private final class Bits: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<UInt16>
    init(_ v: [UInt16]) {
        pointer = .allocate(capacity: v.count)
        pointer.initialize(from: v, count: v.count)
    }
    deinit { pointer.deallocate() }
}

private func matrix(rows: Int, cols: Int, type: ElementType, seed: UInt64) -> WeightMatrix {
    let values = noise(rows * cols, seed: seed).map { $0 * 0.2 }
    let f32 = FloatStorage(values).matrix(rows: rows, cols: cols)
    switch type {
    case .bf16:
        let bits = Bits(values.map(Widen.toBF16))
        return WeightMatrix(rows: rows, cols: cols, type: .bf16, base: UnsafeRawPointer(bits.pointer), owner: bits)
    case .q8: return f32.quantized(Q8.self)
    default: return f32
    }
}

@Suite struct ExpertBankTests {
    // Neither width is a multiple of 16 (nor of q8's block of 32), so pieces end in every tail path of the kernels.
    static let hidden = 72, intermediate = 200

    static func experts(_ type: ElementType, count: Int) -> [FeedForwardWeights] {
        (0..<count).map { e in
            let s = UInt64(10 * e)
            return FeedForwardWeights(gate: matrix(rows: intermediate, cols: hidden, type: type, seed: s + 1),
                                      up: matrix(rows: intermediate, cols: hidden, type: type, seed: s + 2),
                                      down: matrix(rows: hidden, cols: intermediate, type: type, seed: s + 3))
        }
    }

    /// Experts cut into pieces of a few rows give every output bit for bit what each whole expert gives alone.
    @Test(arguments: [ElementType.f32, .bf16, .q8], [16, 1024, 1 << 20])
    func piecesSumAsWholeExperts(type: ElementType, pieceBytes: Int) {
        let h = Self.hidden, n = Self.intermediate
        let ffns = Self.experts(type, count: 4)
        let rowsPerExpert = [1, 3, 2, 4]  // odd and even token counts: every pairing of the kernels
        let tokens = rowsPerExpert.reduce(0, +)
        let x = noise(tokens * h, seed: 99)
        var groups: [ExpertBank.Group] = [], start = 0, scratchFloats = 0
        for (e, rows) in rowsPerExpert.enumerated() {
            groups.append(.init(ffn: ffns[e], rows: start..<(start + rows), scratch: scratchFloats))
            start += rows
            scratchFloats += rows * 2 * n
        }
        var want = [Float](repeating: 0, count: tokens * h), got = want
        var scratch = [Float](repeating: 0, count: scratchFloats)
        x.withUnsafeBufferPointer { xp in
            scratch.withUnsafeMutableBufferPointer { sp in
                want.withUnsafeMutableBufferPointer { wp in
                    for g in groups {
                        g.ffn.apply(xp.baseAddress! + g.rows.lowerBound * h, rows: g.rows.count,
                                    scratch: sp.baseAddress! + g.scratch, into: wp.baseAddress! + g.rows.lowerBound * h, threads: 1)
                    }
                }
            }
        }
        var input = x
        scratch = [Float](repeating: .nan, count: scratchFloats)
        input.withUnsafeMutableBufferPointer { xp in
            scratch.withUnsafeMutableBufferPointer { sp in
                got.withUnsafeMutableBufferPointer { gp in
                    ExpertBank.piecewise(groups, hidden: xp.baseAddress!, hiddenSize: h, scratch: sp.baseAddress!,
                                         into: gp.baseAddress!, pieceBytes: pieceBytes)
                }
            }
        }
        let differing = zip(got, want).filter { $0.bitPattern != $1.bitPattern }.count
        #expect(differing == 0, "\(type), pieces of \(pieceBytes) bytes: \(differing) of \(want.count) outputs differ")
        if pieceBytes == 16 {
            // The smallest pieces are 16 rows: 13 of gate and up, 5 of down per expert.
            let pieces = ExpertBank.pieces(ffns[0].gate, bytes: pieceBytes)
            #expect(pieces.count == 13 && pieces.allSatisfy { $0.lowerBound % 16 == 0 } && pieces.last?.upperBound == n)
            #expect(ExpertBank.pieces(ffns[0].down, bytes: pieceBytes).count == 5)
        }
    }

    /// The bank as the decoder calls it (pieces with several kernel threads, whole products with one): each
    /// assignment's row is its weight times its expert's output for its token.
    @Test(arguments: [ElementType.f32, .bf16])
    func bankWeighsEachExpertsOutput(type: ElementType) {
        let h = Self.hidden, n = Self.intermediate, tokens = 5
        let ffns = Self.experts(type, count: 3)
        let bank = ExpertBank(experts: [ffns.map { Optional($0) }], hiddenSize: h)
        let x = noise(tokens * h, seed: 7)
        // Token t goes to experts t % 3 and (t + 1) % 3, listed out of expert order.
        var assignments: [ExpertAssignment] = []
        for t in 0..<tokens {
            let share = Float(t) / 8
            assignments.append(ExpertAssignment(row: Int32(t), expert: Int32((t + 1) % 3), weight: 0.25 + share))
            assignments.append(ExpertAssignment(row: Int32(t), expert: Int32(t % 3), weight: 0.75 - share))
        }
        var out = [Float](repeating: .nan, count: assignments.count * h)
        x.withUnsafeBufferPointer { xp in
            out.withUnsafeMutableBufferPointer { op in
                bank.apply(layer: 0, hidden: xp.baseAddress!, assignments: &assignments, into: op.baseAddress!)
            }
        }
        let sorted = assignments.indices.dropFirst().allSatisfy { i in
            let a = assignments[i - 1], b = assignments[i]
            return a.expert < b.expert || (a.expert == b.expert && a.row < b.row)
        }
        #expect(sorted)
        #expect(bank.activeExperts[0] == 3)
        var one = [Float](repeating: 0, count: h), scratch = [Float](repeating: 0, count: 2 * n)
        for (i, a) in assignments.enumerated() {
            let t = Int(a.row)
            let row = Array(x[(t * h)..<((t + 1) * h)])
            ffns[Int(a.expert)].apply(row, rows: 1, scratch: &scratch, into: &one, threads: 1)
            let weighted: [Float] = one.map { a.weight * $0 }
            let differing = (0..<h).filter { out[i * h + $0].bitPattern != weighted[$0].bitPattern }.count
            #expect(differing == 0, "assignment \(i): \(differing) of \(h) outputs differ")
        }
    }
}

@Suite struct SiluGLUColumnsTests {
    /// Column ranges with bounds at multiples of 16 (the last at n) give the whole row's values and leave the
    /// other columns alone.
    @Test func columnRangesMatchTheWholeRow() {
        let rows = 3, n = 53
        let source = noise(rows * 2 * n, seed: 5).map { $0 * 6 }
        var whole = source
        Elementwise.siluGLU(&whole, rows: rows, n: n)
        var pieces = source
        for columns in [0..<16, 16..<48, 48..<53] {
            var only = source
            Elementwise.siluGLU(&only, rows: rows, n: n, columns: columns)
            for r in 0..<rows {
                for c in 0..<(2 * n) {
                    let i = r * 2 * n + c
                    #expect(only[i] == (columns.contains(c) ? whole[i] : source[i]), "columns \(columns), row \(r), column \(c)")
                }
            }
            Elementwise.siluGLU(&pieces, rows: rows, n: n, columns: columns)
        }
        #expect(pieces == whole)
    }
}
