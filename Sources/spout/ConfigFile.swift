import Configuration
import Foundation
import SpoutCore
import SystemPackage

/// The configuration file named by `--config FILE` / `SPOUT_CONFIG`: YAML, one `name: value` per
/// option, the names being the long options without `--` (`kafka-property` takes a list):
///
///     database-url: postgresql://spout@db/app
///     slot: spout_orders
///     kafka-property: [linger.ms=5, compression.type=zstd]
///
/// Read by swift-configuration's `FileProvider<YAMLSnapshot>`. A name that is no option is an
/// error: a typo (`slott: orders`) would otherwise run with the default.
///
/// Files of the format before YAML — `name = value` lines, `#` comments — are still read
/// (the first significant line tells: `name = …` rather than `name: …`), with one warning
/// saying how to write them in YAML.
struct ConfigFile: Sendable {
    let path: String
    let provider: any ConfigProvider
    /// The line of each key (1-based), for messages that point at it; the legacy format keeps
    /// one per value of a repeated key.
    let lines: [String: [Int]]
    let isLegacy: Bool

    static let providerName = "file"

    static func load(path: String) async throws(SpoutError) -> ConfigFile {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw .invalidOption("cannot read the config file \(path): check the path given with --config or SPOUT_CONFIG")
        }
        let text = String(decoding: data, as: UTF8.self)
        let significant = text.split(separator: "\n").lazy.map { $0.trimmingCharacters(in: .whitespaces) }
            .filter { !$0.isEmpty && !$0.hasPrefix("#") }
        guard let first = significant.first else {
            // Only comments: nothing set (YAML has no document to parse).
            return ConfigFile(path: path, provider: InMemoryProvider(name: providerName, values: [:]), lines: [:], isLegacy: false)
        }
        if !looksLikeYAML(first) { return try legacy(path: path, text: text) }
        let names = Setting.fileKeys
        var lines: [String: [Int]] = [:], itemLines: [String: [Int]] = [:]
        var currentKey: String?
        for (number, rawLine) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            if let key = currentKey, rawLine.trimmingCharacters(in: .whitespaces).hasPrefix("- ") {
                itemLines[key, default: []].append(number + 1)  // a block list's item, for messages about it
                continue
            }
            // Top-level keys only: nested ones belong to a value that is not an option's.
            guard let first = rawLine.first, !" \t#-.{[".contains(first), let colon = rawLine.firstIndex(of: ":") else { continue }
            var key = rawLine[..<colon].trimmingCharacters(in: .whitespaces)
            if key.count >= 2, let quote = key.first, quote == "\"" || quote == "'", key.last == quote { key = String(key.dropFirst().dropLast()) }
            guard names.contains(key) else { throw unknown(key, at: "\(path):\(number + 1)") }
            lines[key, default: []].append(number + 1)
            currentKey = key
        }
        let provider: FileProvider<YAMLSnapshot>
        do {
            provider = try await FileProvider<YAMLSnapshot>(
                parsingOptions: .init(secretsSpecifier: .dynamic { key, _ in Setting(rawValue: key)?.mayHoldSecret ?? false }),
                filePath: FilePath(path))
        } catch {
            throw .invalidOption("\(path) is not a YAML mapping of option names to values (\(error)), "
                                 + "e.g. database-url: postgresql://localhost/app; quote a value that starts with {, [, * or &")
        }
        // Each option's value has the shape its option takes: one value, or a list for kafka-property.
        for (key, keyLines) in lines {
            guard let setting = Setting(rawValue: key) else { continue }
            let place = "\(key) in \(path):\(keyLines[0])"
            if setting.isRepeatable {
                let list = try? provider.value(forKey: setting.key, type: .stringArray).value
                let single = try? provider.value(forKey: setting.key, type: .string).value
                guard (list ?? single) != nil else { throw .invalidOption("\(place): give a list of name=value items, e.g. [linger.ms=5]") }
            } else {
                guard (try? provider.value(forKey: setting.key, type: .string).value) != nil else {
                    throw .invalidOption("\(place): give one value (text, number or true/false), not a list or mapping "
                                         + "(quote a value that starts with { or [, e.g. topic: \"{tenant_id}.events\")")
                }
            }
        }
        // A list's values point at their own lines.
        for (key, items) in itemLines where lines[key]?.count == 1 { lines[key] = items }
        return ConfigFile(path: path, provider: provider, lines: lines, isLegacy: false)
    }

    /// A key that is no option, with the nearest one when it is near enough to be meant.
    private static func unknown(_ key: String, at place: String) -> SpoutError {
        let hint = Setting.suggestion(for: key, among: Setting.fileKeys).map { " — did you mean \($0)?" }
            ?? " — the names are the long options without --, see spout help run"
        return .invalidOption("unknown option \"\(key)\" in \(place)\(hint)")
    }

    /// `name: value`, `"name": value`, `---`: YAML; `name = value` (and anything else) is the
    /// older format, which reports its own errors as it always did.
    private static func looksLikeYAML(_ line: String) -> Bool {
        if line.hasPrefix("---") || line.hasPrefix("{") { return true }
        guard let colon = line.firstIndex(of: ":") else { return false }
        if let equals = line.firstIndex(of: "="), equals < colon { return false }
        return true
    }

    /// The `name = value` format spout read before YAML.
    private static func legacy(path: String, text: String) throws(SpoutError) -> ConfigFile {
        var values: [String: [String]] = [:]
        var lines: [String: [Int]] = [:]
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
            guard Setting.fileKeys.contains(name) else { throw unknown(name, at: "\(path):\(number + 1)") }
            values[name, default: []].append(value)
            lines[name, default: []].append(number + 1)
        }
        var provided: [AbsoluteConfigKey: ConfigValue] = [:]
        for (name, items) in values {
            guard let setting = Setting(rawValue: name), let last = items.last else { continue }
            provided[AbsoluteConfigKey([name])] = ConfigValue(setting.isRepeatable ? .stringArray(items) : .string(last),
                                                              isSecret: setting.mayHoldSecret)
        }
        return ConfigFile(path: path, provider: InMemoryProvider(name: providerName, values: provided), lines: lines,
                          isLegacy: true)
    }

    /// What to tell the user of a legacy file: that it works, and what the YAML looks like.
    var deprecation: String {
        "\(path) uses the old name = value format, which still works but will go: write it as YAML, one name: value per line "
            + "(slot = orders → slot: orders), kafka-property as a list (kafka-property: [linger.ms=5, acks=all])"
    }

    /// The line of `key`, or of its `index`th value (repeated keys, block list items).
    func line(of key: String, index: Int? = nil) -> Int {
        guard let keyLines = lines[key], let last = keyLines.last else { return 0 }
        guard let index, keyLines.indices.contains(index) else { return isLegacy ? last : keyLines[0] }
        return keyLines[index]
    }

    /// The path named on the command line (`--config PATH`, `--config=PATH`) or by SPOUT_CONFIG,
    /// read before ArgumentParser: its values are secrets for every message, also a parse error's.
    static var pathFromProcess: String? {
        var path = ProcessInfo.processInfo.environment["SPOUT_CONFIG"].flatMap { $0.isEmpty ? nil : $0 }
        let arguments = CommandLine.arguments
        for (index, argument) in arguments.enumerated() {
            if argument == "--config", index + 1 < arguments.count { path = arguments[index + 1] }
            if argument.hasPrefix("--config=") { path = String(argument.dropFirst("--config=".count)) }
        }
        return path
    }
}
