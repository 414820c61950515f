// Package kafkatest starts an in-process Kafka-protocol broker (kfake, via
// internal/broker) per test, reached over real TCP, closed when the test
// ends. Its Cluster() exposes kfake's ControlKey for fault injection.
package kafkatest
