import XCTest
@testable import SpoutAMQP

/// Publisher confirms by delivery tag: single and `multiple` confirms, out of order, repeated
/// or unknown tags, and a long run that compacts the window.
final class AMQPDeliveryTagsTests: XCTestCase {
    private func confirm(_ tags: inout AMQPDeliveryTags, _ tag: UInt64, multiple: Bool = false) -> [UInt64] {
        var confirmed: [UInt64] = []
        tags.confirm(tag, multiple: multiple) { confirmed.append($0) }
        return confirmed
    }

    func testSingleAndMultipleConfirms() {
        var tags = AMQPDeliveryTags(capacity: 4)
        for ticket in UInt64(10)...15 { tags.published(ticket) }   // tags 1...6
        XCTAssertEqual(confirm(&tags, 2), [11], "out of order: only that one")
        XCTAssertEqual(confirm(&tags, 2), [], "a repeated confirm passes nothing")
        XCTAssertEqual(confirm(&tags, 4, multiple: true), [10, 12, 13], "multiple: every earlier tag not yet confirmed")
        XCTAssertEqual(tags.unconfirmed, 2)
        XCTAssertEqual(confirm(&tags, 9), [], "a tag never published")
        XCTAssertEqual(confirm(&tags, 1, multiple: true), [], "below the window")
        XCTAssertEqual(confirm(&tags, 6), [15])
        XCTAssertEqual(confirm(&tags, 5, multiple: true), [14])
        XCTAssertEqual(tags.unconfirmed, 0)
        tags.published(16)   // tag 7
        XCTAssertEqual(confirm(&tags, 7), [16], "tags go on after the window emptied")
        tags.reset()
        tags.published(17)
        XCTAssertEqual(confirm(&tags, 1), [17], "a new channel numbers from 1")
    }

    func testLongRunAgainstAReferenceModel() {
        var tags = AMQPDeliveryTags(capacity: 16)
        var random = SystemRandomNumberGenerator()
        var open: [UInt64: UInt64] = [:]   // tag → ticket
        var nextTag: UInt64 = 1
        var confirmedTickets: [UInt64] = []
        for ticket in UInt64(0)..<20_000 {
            tags.published(ticket)
            open[nextTag] = ticket
            nextTag += 1
            guard Int.random(in: 0..<3, using: &random) == 0, let lowest = open.keys.min() else { continue }
            let tag = UInt64.random(in: lowest..<nextTag, using: &random)
            let multiple = Bool.random(using: &random)
            let expected = open.filter { multiple ? $0.key <= tag : $0.key == tag }.sorted { $0.key < $1.key }.map(\.value)
            let got = confirm(&tags, tag, multiple: multiple)
            XCTAssertEqual(got, expected)
            for key in open.keys where multiple ? key <= tag : key == tag { open[key] = nil }
            confirmedTickets += got
            XCTAssertEqual(tags.unconfirmed, open.count)
        }
        let rest = confirm(&tags, nextTag - 1, multiple: true)
        XCTAssertEqual(Set(confirmedTickets + rest).count, 20_000, "every ticket confirmed exactly once")
        XCTAssertEqual(tags.unconfirmed, 0)
    }
}
