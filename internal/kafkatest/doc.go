// Package kafkatest starts an in-process Kafka-protocol broker (kfake, via
// internal/broker) per test, reached over real TCP, closed when the test
// ends. Its Cluster() exposes kfake's ControlKey for fault injection.
// NewSecureCluster starts one that speaks only TLS, with certificates made
// for the test (NewCerts), and requires SASL.
package kafkatest
