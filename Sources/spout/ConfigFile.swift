import Foundation
import SpoutCore

/// The configuration file: `name = value` lines whose names are the long option names
/// (`database-url = postgresql://…`, `kafka-property = linger.ms=5`, repeatable), `#` comments.
/// Precedence: flags, then `SPOUT_*` environment variables, then this file. A name that is
/// no option is an error: a typo (`slott = orders`) would otherwise run with the default.
struct ConfigFile: Sendable {
    struct Entry: Sendable {
        var value: String
        var line: Int
    }

    private(set) var values: [String: [Entry]] = [:]
    let path: String

    init(path: String) throws(SpoutError) {
        self.path = path
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .invalidOption("cannot read the config file \(path): check the path given with --config or SPOUT_CONFIG")
        }
        let text = String(decoding: data, as: UTF8.self)
        let names = Setting.allCases.filter(\.allowedInFile).map(\.rawValue)
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = rawLine.trimmingCharacters(in: .whitespaces)
            if line.isEmpty || line.hasPrefix("#") { continue }
            guard let equals = line.firstIndex(of: "=") else {
                throw .invalidOption("\(path):\(number + 1): expected name = value, e.g. database-url = postgresql://localhost/app")
            }
            let name = line[..<equals].trimmingCharacters(in: .whitespaces)
            var value = line[line.index(after: equals)...].trimmingCharacters(in: .whitespaces)
            if value.count >= 2, let first = value.first, first == "\"" || first == "'", value.last == first {
                value = String(value.dropFirst().dropLast())
            }
            guard !name.isEmpty, name.allSatisfy({ $0.isLetter || $0.isNumber || $0 == "-" }) else {
                throw .invalidOption("\(path):\(number + 1): \"\(name)\" is not an option name (use the long flag name without --)")
            }
            guard names.contains(name) else {
                let hint = Setting.suggestion(for: name, among: names).map { " — did you mean \($0)?" }
                    ?? " — the names are the long options without --, see spout help run"
                throw .invalidOption("unknown option \"\(name)\" in \(path):\(number + 1)\(hint)")
            }
            values[name, default: []].append(Entry(value: value, line: number + 1))
        }
    }

    func entries(_ name: String) -> [Entry] { values[name] ?? [] }

    var allValues: [String] { values.values.flatMap { $0.map(\.value) } }

    /// The file named by `--config PATH` / `--config=PATH` on the command line, or `SPOUT_CONFIG`.
    static let loaded: Result<ConfigFile?, SpoutError> = {
        var path = ProcessInfo.processInfo.environment["SPOUT_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        let arguments = CommandLine.arguments
        for (index, argument) in arguments.enumerated() {
            if argument == "--config", index + 1 < arguments.count { path = arguments[index + 1] }
            if argument.hasPrefix("--config=") { path = String(argument.dropFirst("--config=".count)) }
        }
        guard let path else { return .success(nil) }
        return Result { () throws(SpoutError) in try ConfigFile(path: path) }
    }()
}
