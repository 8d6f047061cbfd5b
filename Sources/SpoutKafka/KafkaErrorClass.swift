import SpoutCore
import CRdKafka

/// How the Kafka sink treats a librdkafka error code.
enum KafkaErrorClass: Equatable {
    /// The broker or the network may recover: produce again, in order, after a backoff.
    case retriable
    /// The event can never be written as it is (too large, not authorized, bad topic).
    case permanent

    /// Retriable are the local transport/timeout conditions and the broker errors Kafka
    /// documents as retriable (stale metadata, leader changes, replicas catching up); every
    /// other code is permanent, as librdkafka's INTRODUCTION.md ("Permanent errors") says.
    init(_ code: rd_kafka_resp_err_t) {
        switch code {
        case RD_KAFKA_RESP_ERR__TRANSPORT, RD_KAFKA_RESP_ERR__MSG_TIMED_OUT, RD_KAFKA_RESP_ERR__TIMED_OUT,
             RD_KAFKA_RESP_ERR__TIMED_OUT_QUEUE, RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN, RD_KAFKA_RESP_ERR__RESOLVE,
             RD_KAFKA_RESP_ERR__PURGE_QUEUE, RD_KAFKA_RESP_ERR__PURGE_INFLIGHT, RD_KAFKA_RESP_ERR__QUEUE_FULL,
             RD_KAFKA_RESP_ERR__WAIT_COORD, RD_KAFKA_RESP_ERR__NODE_UPDATE, RD_KAFKA_RESP_ERR__RETRY,
             RD_KAFKA_RESP_ERR__IN_PROGRESS, RD_KAFKA_RESP_ERR__PREV_IN_PROGRESS, RD_KAFKA_RESP_ERR__WAIT_CACHE,
             RD_KAFKA_RESP_ERR__OUTDATED, RD_KAFKA_RESP_ERR__SSL,
             RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
             RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT, RD_KAFKA_RESP_ERR_BROKER_NOT_AVAILABLE,
             RD_KAFKA_RESP_ERR_REPLICA_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_NETWORK_EXCEPTION,
             RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS, RD_KAFKA_RESP_ERR_COORDINATOR_NOT_AVAILABLE,
             RD_KAFKA_RESP_ERR_NOT_COORDINATOR, RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
             RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND, RD_KAFKA_RESP_ERR_NOT_CONTROLLER,
             RD_KAFKA_RESP_ERR_CONCURRENT_TRANSACTIONS, RD_KAFKA_RESP_ERR_KAFKA_STORAGE_ERROR,
             RD_KAFKA_RESP_ERR_FENCED_LEADER_EPOCH, RD_KAFKA_RESP_ERR_UNKNOWN_LEADER_EPOCH,
             RD_KAFKA_RESP_ERR_OFFSET_NOT_AVAILABLE, RD_KAFKA_RESP_ERR_PREFERRED_LEADER_NOT_AVAILABLE,
             RD_KAFKA_RESP_ERR_THROTTLING_QUOTA_EXCEEDED:
            self = .retriable
        default:
            self = .permanent
        }
    }

    /// What a user can do about a permanent error, when there is something obvious.
    static func hint(_ code: rd_kafka_resp_err_t) -> String? {
        switch code {
        case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE, RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
            "the event is larger than message.max.bytes: raise it with --kafka-property message.max.bytes=N "
                + "(and the topic's max.message.bytes on the brokers), or make the payload smaller"
        case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED, RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
            "the credentials may not write to this topic: grant WRITE (and IDEMPOTENT_WRITE on older brokers) to spout's principal"
        case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART, RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC, RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
            "the topic does not exist and the brokers do not create topics automatically: create it, or change --topic"
        case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
            "the topic name is not valid in Kafka (letters, digits, '.', '_' and '-', at most 249): change --topic"
        default:
            nil
        }
    }
}
