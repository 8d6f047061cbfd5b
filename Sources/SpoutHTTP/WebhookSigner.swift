import CCrypto
import Foundation
import SpoutCore

/// Standard Webhooks signatures (https://www.standardwebhooks.com): `webhook-signature:
/// v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">`, keyed with the
/// secret's bytes (`whsec_` + base64, as the spec's libraries take it). The secret is never
/// shown: errors name only its shape.
struct WebhookSigner: Sendable {
    private let key: [UInt8]

    init(secret: String) throws(SpoutError) {
        let encoded = secret.hasPrefix("whsec_") ? String(secret.dropFirst(6)) : secret
        guard let data = Data(base64Encoded: encoded), data.count >= 1 else {
            throw .invalidOption("--http-secret: not a Standard Webhooks secret: give whsec_ followed by base64 (e.g. whsec_\(Data("24 random bytes or more!".utf8).base64EncodedString()))")
        }
        key = Array(data)
    }

    /// The `webhook-signature` value for a request.
    func signature(id: String, timestamp: Int, body: [UInt8]) -> String {
        var signed = Array("\(id).\(timestamp).".utf8)
        signed.append(contentsOf: body)
        var digest = [UInt8](repeating: 0, count: Int(EVP_MAX_MD_SIZE))
        var length: UInt32 = 0
        _ = key.withUnsafeBytes { keyBytes in
            signed.withUnsafeBytes { data in
                HMAC(EVP_sha256(), keyBytes.baseAddress, Int32(keyBytes.count), data.baseAddress?.assumingMemoryBound(to: UInt8.self),
                     data.count, &digest, &length)
            }
        }
        return "v1," + Data(digest.prefix(Int(length))).base64EncodedString()
    }
}
