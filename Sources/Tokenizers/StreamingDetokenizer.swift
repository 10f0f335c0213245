/// Turns ids arriving one at a time into text increments that never end inside a UTF-8 character.
///
/// The rule is the fixtures' (and vLLM's): after each id, decode the ids so far; if the text ends in U+FFFD (an
/// incomplete character) emit nothing yet, else emit what it adds to the text already emitted. To keep the cost per
/// token flat only a window is decoded: the ids from the previous emission's start (`prefixStart`) on. That window
/// starts where a character had completed, so its text continues exactly as the whole prefix's would; decoders
/// that strip a leading space strip it from both texts compared.
public struct StreamingDetokenizer: Sendable {
    public let tokenizer: Tokenizer
    public let skipSpecialTokens: Bool
    private var ids: [Int] = []
    /// Where the decoded window starts: ids before it are emitted and not needed to decode what follows.
    private var prefixStart = 0
    /// Ids `prefixStart..<readStart` have been emitted; their text is what the window's text must extend.
    private var readStart = 0

    public init(tokenizer: Tokenizer, skipSpecialTokens: Bool = true) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// All ids pushed so far.
    public var allIds: [Int] { ids }

    /// Takes the next id and returns the text to emit now (possibly empty).
    public mutating func push(_ id: Int) throws(TokenizerError) -> String {
        ids.append(id)
        guard let increment = try pending(), increment.unicodeScalars.last != "\u{FFFD}" else { return "" }
        prefixStart = readStart
        readStart = ids.count
        return increment
    }

    /// The text still held back at the end of the stream (an incomplete character comes out as U+FFFD).
    public mutating func finish() throws(TokenizerError) -> String {
        let increment = try pending() ?? ""
        prefixStart = readStart
        readStart = ids.count
        return increment
    }

    /// The text the ids after `readStart` add, or `nil` when they add none yet.
    private func pending() throws(TokenizerError) -> String? {
        let context = try tokenizer.decode(ids[prefixStart..<readStart], skipSpecialTokens: skipSpecialTokens).unicodeScalars
        let full = try tokenizer.decode(ids[prefixStart...], skipSpecialTokens: skipSpecialTokens).unicodeScalars
        guard full.count > context.count, full.starts(with: context) else { return nil }
        return String(String.UnicodeScalarView(full.dropFirst(context.count)))
    }
}
