/// A chat template that cannot be parsed or rendered, or one that refused its input through `raise_exception`.
public enum TemplateError: Error, CustomStringConvertible, Equatable {
    /// The template is not valid in the supported Jinja subset.
    case syntax(String, line: Int)
    /// The template uses a statement, filter, test, method or global outside the supported subset.
    case unsupported(String, line: Int)
    /// Rendering failed (a type error, an undefined call, ...).
    case runtime(String, line: Int)
    /// The template called `raise_exception(message)`: it refuses the conversation.
    case raised(String)

    public var description: String {
        switch self {
        case .syntax(let m, let line): return "chat template line \(line): \(m)"
        case .unsupported(let m, let line): return "chat template line \(line): \(m) is not supported by this Jinja subset"
        case .runtime(let m, let line): return "chat template line \(line): \(m)"
        case .raised(let m): return m
        }
    }
}
