// Package broker runs franz-go's kfake, an in-process Kafka-protocol broker,
// persisted under a data directory. It is the embedded broker of spoolctl
// dev and spoolctl broker and of the tests, and the only kfake importer: the
// ingress and processor binaries never link it.
package broker
