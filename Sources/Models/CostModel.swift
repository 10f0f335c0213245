/// Work and traffic of forward passes, for reporting achieved fractions of the machine's limits.
public struct CostModel {
    public let model: MoEDecoder

    public init(model: MoEDecoder) { self.model = model }

    /// Floating-point operations of a forward pass over one sequence's tokens at `positions`, with `logitRows`
    /// rows through the LM head. A multiply-add counts as 2.
    public func flops(positions: Range<Int>, logitRows: Int) -> Double {
        let s = model.spec, h = Double(s.hiddenSize), t = Double(positions.count)
        var perToken = 0.0
        var attentionPairs = 0.0  // Σ over tokens of keys attended
        for p in positions { attentionPairs += Double(p + 1) }
        for (l, layer) in model.layers.enumerated() {
            perToken += 2 * h * Double(s.qDim + 2 * s.kvDim) + 2 * Double(s.qDim) * h
            switch layer.feedForward {
            case .dense(let f):
                perToken += 6 * h * Double(f.intermediate)
            case .moe(_, let shared, _):
                perToken += 2 * h * Double(s.experts) + Double(s.topK) * 6 * h * Double(s.expertIntermediate)
                if let shared { perToken += 6 * h * Double(shared.intermediate) + 2 * h }
            }
            if let w = s.slidingWindow[l] {
                attentionPairs = positions.reduce(0.0) { $0 + Double(min($1 + 1, w)) }
            }
        }
        let attention = 4 * Double(s.heads * s.headDim) * attentionPairs * Double(s.layers)
        return perToken * t + attention + 2 * h * Double(s.vocabSize) * Double(logitRows)
    }

    /// Bytes a decode step reads: every non-expert weight once, the experts that received tokens
    /// (`activeExperts[layer]`), one embedding row per sequence, and each sequence's cached keys and values.
    public func decodeBytes(activeExperts: [Int], contexts: [Int]) -> Double {
        let s = model.spec
        let total = model.weightBytes
        let perExpert = Double(model.bank.experts.joined().first { $0 != nil }??.byteCount ?? 0)
        let experts = Double(activeExperts.reduce(0, +)) * perExpert
        let nonExpert = Double(total.total - total.experts - model.embedding.byteCount)
        let embeddingRows = Double(contexts.count * s.hiddenSize * model.embedding.type.byteSize)
        let kv = Double(contexts.reduce(0, +)) * Double(2 * s.kvDim * model.kvDType.byteSize * s.layers)
        return nonExpert + experts + embeddingRows + kv + (s.tieWordEmbeddings ? Double(model.lmHead.byteCount) : 0)
    }
}
