// Command processor is spool's Kafka-to-PostgreSQL applier.
package main
