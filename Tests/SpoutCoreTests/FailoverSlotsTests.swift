@testable import SpoutCore
import XCTest

/// The failover-slot decisions and texts that need no server (FailoverTests has the servers).
final class FailoverSlotsTests: XCTestCase {
    func testFailoverIsOnByDefaultFrom17AndRefusedBefore() throws {
        XCTAssertEqual(try ReplicationSetup.failover(requested: nil, serverVersion: 170000), true)
        XCTAssertEqual(try ReplicationSetup.failover(requested: nil, serverVersion: 180006), true)
        XCTAssertEqual(try ReplicationSetup.failover(requested: false, serverVersion: 180006), false)
        XCTAssertEqual(try ReplicationSetup.failover(requested: true, serverVersion: 180006), true)
        XCTAssertEqual(try ReplicationSetup.failover(requested: nil, serverVersion: 160004), false)
        XCTAssertEqual(try ReplicationSetup.failover(requested: false, serverVersion: 150018), false)
        XCTAssertThrowsError(try ReplicationSetup.failover(requested: true, serverVersion: 150018)) { error in
            XCTAssertTrue("\(error)".hasPrefix("--failover needs PostgreSQL 17 or newer (failover slots), the server is PostgreSQL 15:"), "\(error)")
        }
    }

    func testStatementPieces() {
        XCTAssertEqual(ReplicationSetup.createSlotCall(slot: "it's", failover: true),
                       "pg_create_logical_replication_slot('it''s', 'pgoutput', false, false, true)")
        XCTAssertEqual(ReplicationSetup.createSlotCall(slot: "s", failover: false), "pg_create_logical_replication_slot('s', 'pgoutput')")
        XCTAssertEqual(ReplicationSetup.createSlotCommandOption(failover: true), "FAILOVER true")
        XCTAssertNil(ReplicationSetup.createSlotCommandOption(failover: false))
        XCTAssertEqual(ReplicationSetup.alterFailoverCommand(slot: "a\"b"), "ALTER_REPLICATION_SLOT \"a\"\"b\" (FAILOVER true)")
    }

    func testPrimaryConninfoNamesADatabase() {
        XCTAssertTrue(ReplicationSetup.conninfoNamesDatabase("user=postgres host=10.0.0.1 port=5432 dbname=postgres"))
        XCTAssertTrue(ReplicationSetup.conninfoNamesDatabase("dbname = app host=db1"))
        XCTAssertTrue(ReplicationSetup.conninfoNamesDatabase("postgresql://rep@db1:5432/app?sslmode=require"))
        XCTAssertTrue(ReplicationSetup.conninfoNamesDatabase("postgres://db1?dbname=app"))
        XCTAssertFalse(ReplicationSetup.conninfoNamesDatabase("user=postgres host=10.0.0.1 port=5432 sslmode=prefer"))
        XCTAssertFalse(ReplicationSetup.conninfoNamesDatabase("user=postgres passfile=/x/mydbname=y host=h"))
        XCTAssertFalse(ReplicationSetup.conninfoNamesDatabase("postgresql://rep@db1:5432"))
        XCTAssertFalse(ReplicationSetup.conninfoNamesDatabase("postgresql://rep@db1:5432/?sslmode=require"))
    }

    func testStandbyProblemsNameEachMissingSetting() {
        let good = ["sync_replication_slots": "on", "hot_standby_feedback": "on", "wal_level": "logical",
                    "primary_slot_name": "standby1", "primary_conninfo": "host=db1 dbname=postgres"]
        XCTAssertEqual(ReplicationSetup.standbyProblems(good), [])
        var bad = good
        bad["sync_replication_slots"] = "off"
        bad["wal_level"] = "replica"
        bad["primary_slot_name"] = ""
        bad["primary_conninfo"] = nil
        let problems = ReplicationSetup.standbyProblems(bad)
        XCTAssertEqual(problems.count, 4, "\(problems)")
        XCTAssertTrue(problems[0].hasPrefix("sync_replication_slots is off"))
        XCTAssertTrue(problems[1].hasPrefix("wal_level is \"replica\""))
        XCTAssertTrue(problems[2].hasPrefix("primary_slot_name is not set"))
        XCTAssertTrue(problems[3].hasPrefix("cannot read primary_conninfo"))
    }
}
