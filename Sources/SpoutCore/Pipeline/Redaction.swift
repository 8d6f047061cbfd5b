/// Keeps passwords out of logs and errors (DESIGN §4). Text that came from a database
/// URL/DSN, a sink URL or a broker property goes through here before anyone sees it.
///
/// Two layers: `url`/`conninfo`/`assignments` mask credentials where the syntax puts them,
/// even in malformed input; `secrets(in:)` + `scrub` remove those same strings from text
/// produced elsewhere (libpq and librdkafka echo parts of what they were given).
public enum Redaction {
    public static let mask = "***"

    /// Shorter secrets are not scrubbed from free text: masking every "ab" would garble the
    /// message, and the syntax-aware layer still masks them where they stand.
    static let shortestScrubbed = 4

    /// A URL with its credentials masked: `redis://:pw@h` → `redis://:***@h`,
    /// `nats://token@h` → `nats://***@h`, and `password`/`secret`/`token` query values.
    /// `keepBareUser`: `user@` is a login name (PostgreSQL), not a token (NATS).
    public static func url(_ text: String, keepBareUser: Bool = false) -> String {
        var result = text
        if let span = userinfo(in: text) {
            let info = text[span]
            let replacement: String
            if let colon = info.firstIndex(of: ":") {
                replacement = String(info[..<colon]) + ":" + mask
            } else {
                replacement = keepBareUser ? String(info) : mask
            }
            result = String(text[..<span.lowerBound]) + replacement + String(text[span.upperBound...])
        }
        return assignments(result).text
    }

    /// A libpq connection string (URL or key/value DSN) with every password masked.
    public static func conninfo(_ text: String) -> String {
        isURI(text) ? url(text, keepBareUser: true) : assignments(text).text
    }

    /// `name=value` items (DSN keys, query parameters, broker properties) with the values of
    /// secret-looking names masked, and those values.
    public static func assignments(_ text: String) -> (text: String, secrets: [String]) {
        let characters = Array(text)
        var output = ""
        var secrets: [String] = []
        var index = 0
        var copied = 0
        while index < characters.count {
            guard characters[index] == "=" || characters[index] == ":" else { index += 1; continue }
            let isColon = characters[index] == ":"
            var keyEnd = index
            while keyEnd > 0, characters[keyEnd - 1] == " " { keyEnd -= 1 }
            var keyStart = keyEnd
            while keyStart > 0, isNameCharacter(characters[keyStart - 1]) { keyStart -= 1 }
            let key = String(characters[keyStart..<keyEnd])
            // `sasl.password:value` is a mistyped property; `host:port` is not a secret.
            guard !key.isEmpty, isSecretName(key), !(isColon && keyEnd != index) else { index += 1; continue }
            var valueStart = index + 1
            while valueStart < characters.count, characters[valueStart] == " ", !isColon { valueStart += 1 }
            var valueEnd = valueStart
            if valueStart < characters.count, characters[valueStart] == "'" {
                // libpq DSN quoting: '…' with \' and \\ escapes; unterminated runs to the end.
                valueEnd += 1
                while valueEnd < characters.count, characters[valueEnd] != "'" {
                    valueEnd += characters[valueEnd] == "\\" ? 2 : 1
                }
                valueEnd = min(valueEnd + 1, characters.count)
            } else {
                while valueEnd < characters.count, !characters[valueEnd].isWhitespace, characters[valueEnd] != "&" { valueEnd += 1 }
            }
            guard valueEnd > valueStart else { index = valueStart; continue }
            let value = String(characters[valueStart..<valueEnd])
            secrets.append(value)
            if value.hasPrefix("'") { secrets.append(String(value.dropFirst().dropLast(value.count > 1 && value.hasSuffix("'") ? 1 : 0))) }
            output += String(characters[copied..<valueStart]) + mask
            copied = valueEnd
            index = valueEnd
        }
        output += String(characters[copied...])
        return (output, secrets)
    }

    /// Every string in `text` that is a password, token or secret property value, raw and
    /// percent-decoded: what `scrub` must remove from messages about this text.
    public static func secrets(in text: String) -> [String] {
        var found = assignments(text).secrets
        if let span = userinfo(in: text) {
            let info = text[span]
            if let colon = info.firstIndex(of: ":") {
                found.append(String(info[info.index(after: colon)...]))
            } else if !isURI(text) {
                found.append(String(info))  // a NATS token; a PostgreSQL user name is no secret
            }
        }
        found += found.compactMap { $0.removingPercentEncoding }
        return found.filter { $0.count >= shortestScrubbed }
    }

    /// `text` with every occurrence of the secrets masked, longest first (a secret may
    /// contain a shorter one).
    public static func scrub(_ text: String, secrets: [String]) -> String {
        var result = text
        for secret in Set(secrets).sorted(by: { $0.count > $1.count }) where secret.count >= shortestScrubbed {
            result = result.replacingOccurrences(of: secret, with: mask)
        }
        return result
    }

    /// Property and parameter names whose values are credentials: `password`, `sslpassword`,
    /// `sasl.password`, `sasl.oauthbearer.client.secret`, `sasl.oauthbearer.config`,
    /// `ssl.key.pem`, tokens. Not `sasl.username` or `sasl.mechanisms`: scrubbing a value like
    /// PLAIN from every message would hide more than it protects.
    public static func isSecretName(_ name: String) -> Bool {
        let lower = name.lowercased()
        return ["password", "passwd", "secret", "token", "credential", "sasl.oauthbearer.config", "sasl.jaas.config", "key.pem", "ssl.key"]
            .contains { lower.contains($0) }
    }

    static func isURI(_ text: String) -> Bool {
        let lower = text.lowercased()
        return lower.hasPrefix("postgresql://") || lower.hasPrefix("postgres://")
    }

    /// The credentials before `@`, also in malformed URLs (`redis:/:pw@h`, `[::1` hosts). The
    /// last `@` before the query counts, as a user means it: `u:pa/ss@h` has the password
    /// `pa/ss`, even though libpq would read the host `u` (PostgresConnection refuses that).
    static func userinfo(in text: String) -> Range<String.Index>? {
        let start: String.Index
        if let separator = text.range(of: "://") {
            start = separator.upperBound
        } else if let colon = text.firstIndex(of: ":"), colon > text.startIndex,
                  text[..<colon].allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "+.-".contains($0)) }) {
            start = text[text.index(after: colon)...].firstIndex(where: { $0 != "/" }) ?? text.endIndex
        } else {
            return nil
        }
        let rest = text[start...]
        let query = rest.firstIndex(of: "?") ?? rest.endIndex
        if let at = rest[..<query].lastIndex(of: "@") { return start..<at }
        // An "@" only after the "?": a password with a "?" (`u:p?w@h`), unless a path comes
        // first (`h:5432/db?application_name=a@b`).
        guard let at = rest.lastIndex(of: "@"), !rest[..<at].contains("/") else { return nil }
        return start..<at
    }

    private static func isNameCharacter(_ character: Character) -> Bool {
        character.isASCII && (character.isLetter || character.isNumber || "._-".contains(character))
    }
}
