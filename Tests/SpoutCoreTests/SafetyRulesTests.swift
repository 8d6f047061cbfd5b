@testable import SpoutCore
import XCTest

/// Row content in log lines and on terminals.
final class LogEscapingTests: XCTestCase {
    func testControlCharactersBecomeVisibleEscapes() {
        XCTAssertEqual(Log.escaped("plain text, ünïcode ✓"), "plain text, ünïcode ✓")
        XCTAssertEqual(Log.escaped("a\nspout: stopped: forged"), "a\\nspout: stopped: forged")
        XCTAssertEqual(Log.escaped("\u{1B}]0;title\u{07}\u{1B}[2J"), "\\u{1B}]0;title\\u{7}\\u{1B}[2J")
        XCTAssertEqual(Log.escaped("tab\there\r\u{0}"), "tab\\there\\r\\u{0}")
        XCTAssertEqual(Log.escaped("del\u{7F} c1\u{9B}31m"), "del\\u{7F} c1\\u{9B}31m")
        XCTAssertEqual(Log.escaped("rtl\u{202E}txt.exe\u{2066}"), "rtl\\u{202E}txt.exe\\u{2066}")
    }
}

/// What the publication watch calls a change (pure: the SQL's answers in, a message or nil out).
final class PublicationWatchRulesTests: XCTestCase {
    let setup = ReplicationSetup(table: TableName(schema: "public", name: "outbox"), publication: "spout", slot: "spout")
    let identity = PublicationWatch.Identity(tableOID: 100, publicationOID: 200, membershipOID: 300)

    func change(tableName: String? = "public.outbox", publicationOID: UInt32? = 200, published: Bool = true, nameOID: UInt32? = 100,
                membershipOID: UInt32? = 300, publishesInserts: Bool = true) -> String? {
        PublicationWatch.change(setup: setup, identity: identity, tableName: tableName, publicationOID: publicationOID,
                                published: published, nameOID: nameOID, membershipOID: membershipOID, publishesInserts: publishesInserts)
    }

    func testUnchangedAndRenamedAreFine() {
        XCTAssertNil(change())
        // Renamed away (the name resolves to nothing, the OID lives on): the same table.
        XCTAssertNil(change(tableName: "public.outbox2", nameOID: nil))
    }

    func testEveryChangeIsNamedWithItsRecovery() throws {
        XCTAssertTrue(try XCTUnwrap(change(tableName: nil, published: false, nameOID: 101)).contains("was dropped while spout ran and a new table of that name (oid 101)"))
        XCTAssertTrue(try XCTUnwrap(change(publicationOID: nil)).contains("publication \"spout\" was dropped"))
        XCTAssertTrue(try XCTUnwrap(change(publicationOID: 201)).contains("dropped and created again"))
        XCTAssertTrue(try XCTUnwrap(change(published: false)).contains("no longer publishes the outbox table public.outbox"))
        XCTAssertTrue(try XCTUnwrap(change(tableName: "public.outbox_old", nameOID: 102)).contains("is now another table (oid 102)"))
        XCTAssertTrue(try XCTUnwrap(change(membershipOID: 301)).contains("removed from publication \"spout\" and added again"))
        XCTAssertTrue(try XCTUnwrap(change(publishesInserts: false)).contains("no longer publishes inserts"))
    }

    func testNothingIsConfirmedPastTheVerifiedPosition() {
        XCTAssertEqual(ReplicationSession.confirmable(acknowledged: LSN(9), verified: nil), LSN(9), "no watch (tests of the relay alone)")
        XCTAssertEqual(ReplicationSession.confirmable(acknowledged: LSN(9), verified: LSN(7)), LSN(7), "an acknowledged commit past the check waits for it")
        XCTAssertEqual(ReplicationSession.confirmable(acknowledged: LSN(5), verified: LSN(7)), LSN(5))
    }

    func testLSNAdvancedSaturates() {
        XCTAssertEqual(LSN(0x16_B374_D848).advanced(by: 1).description, "16/B374D849")
        XCTAssertEqual(LSN(.max).advanced(by: 1), LSN(.max))
    }
}
