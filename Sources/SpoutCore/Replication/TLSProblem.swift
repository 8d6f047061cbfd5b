// issue 15: PostgreSQL over TLS
/// A connection failure that libpq reports in OpenSSL's or its own words (`certificate verify
/// failed`, `does not match host name`), told in plain words with the URL parameter that fixes
/// it. libpq's text stays in the message before it; this adds what to do.
public struct TLSProblem: Equatable, CustomStringConvertible, Sendable {
    /// The problem in plain words.
    public var problem: String
    /// What the user changes.
    public var fix: String

    public var description: String { "\(problem): \(fix)" }

    /// The problem libpq's message names, or nil when it is not about TLS. Matched on libpq's
    /// own wording (PostgreSQL 15 to 18, OpenSSL 3); the order matters where messages overlap.
    public init?(libpqMessage message: String) {
        let text = message.lowercased()
        func has(_ words: String...) -> Bool { words.allSatisfy { text.contains($0) } }
        if has("certificate verify failed") || has("certificate has expired") || has("self-signed certificate")
            || has("unable to get local issuer certificate") {
            // OpenSSL's reason through libpq is "certificate verify failed" for an unknown CA
            // and an expired certificate alike.
            self.init(problem: "the server's TLS certificate is not signed by a CA spout trusts, or it has expired",
                      fix: "give the CA that signed it with sslrootcert=/path/ca.crt in --database-url (and check the certificate's dates)")
        } else if has("does not match host name") {
            self.init(problem: "the server's TLS certificate is not valid for this host name",
                      fix: "connect by a name the certificate lists (host= in --database-url), or use sslmode=verify-ca to check the CA only")
        } else if has("root certificate file") && has("does not exist") {
            self.init(problem: "sslmode=verify-ca/verify-full needs the CA that signed the server's certificate",
                      fix: "give it with sslrootcert=/path/ca.crt in --database-url")
        } else if has("requires a valid client certificate") {
            self.init(problem: "the server requires a client certificate",
                      fix: "give one with sslcert=/path/client.crt&sslkey=/path/client.key in --database-url (the certificate's CN is the user name)")
        } else if has("certificate authentication failed") || has("alert unknown ca") || has("alert bad certificate")
            || has("alert certificate unknown") || has("alert certificate expired") || has("alert certificate revoked") {
            self.init(problem: "the server refused our client certificate",
                      fix: "give a certificate signed by the CA in the server's ssl_ca_file whose CN is the user name (or mapped in pg_ident.conf) "
                          + "with sslcert=/path/client.crt&sslkey=/path/client.key in --database-url")
        } else if has("could not open certificate file") || has("could not load private key file") || has("could not read certificate file")
            || has("certificate present, but not private key file") || has("has group or world access") {
            self.init(problem: "the client certificate or key named in --database-url cannot be used",
                      fix: "check the paths in sslcert= and sslkey= (the key readable by spout only, mode 0600)")
        } else if has("server does not support ssl") {
            self.init(problem: "the server does not speak TLS on this port",
                      fix: "turn ssl on in the server's postgresql.conf, or change sslmode in --database-url")
        } else if has("no pg_hba.conf entry") && has("no encryption") {
            self.init(problem: "the server accepts only encrypted connections from here",
                      fix: "add sslmode=verify-full&sslrootcert=/path/ca.crt (or at least sslmode=require) to --database-url")
        } else if has("no pg_hba.conf entry") && has("ssl encryption") {
            self.init(problem: "the server's pg_hba.conf has no line for this user and database over TLS",
                      fix: "connect as a user a hostssl line lets in (a cert line needs sslcert=/path/client.crt&sslkey=/path/client.key in --database-url), "
                          + "or add a hostssl line on the server")
        } else if has("ssl error") || has("ssl syscall error") {
            self.init(problem: "the TLS handshake with the server failed",
                      fix: "check sslmode, sslrootcert, sslcert and sslkey in --database-url and the server's ssl settings")
        } else {
            return nil
        }
    }

    public init(problem: String, fix: String) {
        self.problem = problem
        self.fix = fix
    }
}
