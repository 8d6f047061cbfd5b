import Configuration
import Foundation
import SpoutCore
import Synchronization

/// The configuration in effect for one command: a swift-configuration `ConfigReader` over, in
/// order of precedence, the flags given on the command line, `SPOUT_*` environment variables,
/// the config file (`--config` / `SPOUT_CONFIG`) and spout's defaults. Every value comes back
/// `Sourced`, so that an error names the flag, the variable or the file line to fix.
struct Settings: Sendable {
    private let reader: ConfigReader
    private let sources: SourceRecorder
    /// The `providerName`s of the environment, file and defaults providers, to tell which answered.
    private let environmentName: String, fileName: String?, defaultsName: String
    let file: ConfigFile?

    /// The flags of the command line by option (a repeatable option's values in order; a switch
    /// is there only when given).
    typealias Flags = [Setting: [String]]

    static let flagProvider = "flags", defaultProvider = "defaults"

    static func load(flags: Flags, environment: [String: String] = ProcessInfo.processInfo.environment) async throws(SpoutError) -> Settings {
        try checkVariables(environment)
        var given: [AbsoluteConfigKey: ConfigValue] = [:]
        for (setting, values) in flags {
            guard let last = values.last else { continue }
            given[setting.key] = ConfigValue(setting.isRepeatable ? .stringArray(values) : .string(last), isSecret: setting.mayHoldSecret)
        }
        // The provider encodes `database-url` as DATABASE_URL: hand it the SPOUT_ variables under
        // those names. SPOUT_KAFKA_PROPERTIES separates its items by spaces or newlines.
        var variables: [String: String] = [:], secretVariables: Set<String> = []
        for setting in Setting.allCases {
            guard let value = environment[setting.variable], !value.isEmpty else { continue }
            let name = setting.rawValue.uppercased().replacingOccurrences(of: "-", with: "_")
            variables[name] = setting.isRepeatable
                ? value.split(whereSeparator: { $0 == "\n" || $0 == " " && setting != .httpHeader }).joined(separator: "\n") : value // issue 14: HTTP (headers hold spaces)
            if setting.mayHoldSecret { secretVariables.insert(name) }
        }
        let path = given[Setting.config.key].flatMap { if case let .string(path) = $0.content { path } else { nil } }
            ?? environment[Setting.config.variable].flatMap { $0.isEmpty ? nil : $0 }
        var file: ConfigFile?
        if let path { file = try await ConfigFile.load(path: path) }
        let environmentProvider = EnvironmentVariablesProvider(environmentVariables: variables, secretsSpecifier: .specific(secretVariables),
                                                               arraySeparator: "\n")
        let defaults = InMemoryProvider(name: defaultProvider, values: Setting.defaults)
        var providers: [any ConfigProvider] = [InMemoryProvider(name: flagProvider, values: given), environmentProvider]
        if let file { providers.append(file.provider) }
        providers.append(defaults)
        let sources = SourceRecorder()
        return Settings(reader: ConfigReader(providers: providers, accessReporter: sources), sources: sources,
                        environmentName: environmentProvider.providerName, fileName: file?.provider.providerName,
                        defaultsName: defaults.providerName, file: file)
    }

    /// The value in effect and where it was set; nil when no provider (not even the defaults) has one.
    func lookup(_ setting: Setting) -> Sourced? {
        guard let value = reader.string(forKey: ConfigKey([setting.rawValue]), isSecret: setting.mayHoldSecret) else { return nil }
        return Sourced(setting: setting, value: value, origin: origin(of: setting))
    }

    /// The value in effect, given or default.
    func value(_ setting: Setting) -> String? { lookup(setting)?.value }

    /// Set by a flag, a variable or the file: not a default.
    func given(_ setting: Setting) -> Sourced? {
        guard let found = lookup(setting), sources.provider(of: setting.rawValue) != defaultsName else { return nil }
        return found
    }

    /// Every value of a repeatable option, from the first source that has any.
    func values(_ setting: Setting) -> [Sourced] {
        let key = ConfigKey([setting.rawValue])
        let items = reader.stringArray(forKey: key, isSecret: setting.mayHoldSecret)
            ?? reader.string(forKey: key, isSecret: setting.mayHoldSecret).map { [$0] } ?? []
        let origin = origin(of: setting)
        return items.enumerated().map { index, value in
            var origin = origin
            if case let .file(path, _) = origin, let file { origin = .file(path: path, line: file.line(of: setting.rawValue, index: index)) }
            return Sourced(setting: setting, value: value, origin: origin)
        }.filter { !$0.value.isEmpty }
    }

    /// A switch that is on when given, else from the environment or the file.
    func flag(_ setting: Setting) throws(SpoutError) -> Bool {
        try given(setting)?.boolean() ?? false
    }

    /// A numeric option checked against its range, from wherever it was set.
    func integer(_ setting: Setting, in range: ClosedRange<Int>) throws(SpoutError) -> Int? {
        try given(setting)?.integer(in: range)
    }

    private func origin(of setting: Setting) -> Sourced.Origin {
        let provider = sources.provider(of: setting.rawValue)
        if provider == environmentName { return .environment }
        if let file, provider == fileName { return .file(path: file.path, line: file.line(of: setting.rawValue)) }
        return .flag
    }

    /// Unknown `SPOUT_*` variables are mistakes (`SPOUT_SLOTT`) that would otherwise leave an
    /// option at its default; the project's tooling variables are not spout's and pass.
    static func checkVariables(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws(SpoutError) {
        let known = Setting.allCases.map(\.variable)
        for name in environment.keys.sorted() where name.hasPrefix("SPOUT_") {
            guard !known.contains(name), !Setting.isToolingVariable(name) else { continue }
            let hint = Setting.suggestion(for: name, among: known).map { ": did you mean \($0)?" }
                ?? ": see spout help for the options (SPOUT_ + the option name, dashes as underscores)"
            throw .invalidOption("unknown environment variable \(name)\(hint)")
        }
    }

    /// Every string on the command line, in `SPOUT_*` variables or in the config file that is
    /// a password, token or secret property value: no message may contain one. Read from the
    /// process itself, so that ArgumentParser's errors (before any `Settings`) are scrubbed too.
    static let secrets: [String] = {
        var texts = CommandLine.arguments.flatMap { argument -> [String] in
            guard argument.hasPrefix("--"), let equals = argument.firstIndex(of: "=") else { return [argument] }
            return [argument, String(argument[argument.index(after: equals)...])]
        }
        texts += ProcessInfo.processInfo.environment.filter { $0.key.hasPrefix("SPOUT_") }.values
        if let path = ConfigFile.pathFromProcess, let data = FileManager.default.contents(atPath: path) {
            // Each line, a YAML list item without its dash and quotes, and what follows the first
            // `=` or `:` (the value, however the file was written).
            func unquoted(_ text: String) -> String {
                guard text.count >= 2, let quote = text.first, quote == "\"" || quote == "'", text.last == quote else { return text }
                return String(text.dropFirst().dropLast())
            }
            for line in String(decoding: data, as: UTF8.self).split(separator: "\n") {
                let trimmed = line.trimmingCharacters(in: .whitespaces)
                texts.append(trimmed)
                if trimmed.hasPrefix("- ") { texts.append(unquoted(String(trimmed.dropFirst(2)).trimmingCharacters(in: .whitespaces))) }
                if let separator = line.firstIndex(where: { $0 == "=" || $0 == ":" }) {
                    texts.append(unquoted(line[line.index(after: separator)...].trimmingCharacters(in: .whitespaces)))
                }
            }
        }
        return texts.flatMap(Redaction.secrets(in:))
    }()
}

/// Which provider answered each lookup: swift-configuration reports every access with the
/// results of the providers it asked, the answering one last.
final class SourceRecorder: AccessReporter {
    private let answered = Mutex<[String: String]>([:])

    func report(_ event: AccessEvent) {
        let key = event.metadata.key.components.joined(separator: ".")
        let provider: String? = event.providerResults.last.flatMap { result in
            guard case let .success(lookup) = result.result, lookup.value != nil else { return nil }
            return result.providerName
        }
        answered.withLock { $0[key] = provider }
    }

    func provider(of key: String) -> String? { answered.withLock { $0[key] } }
}
