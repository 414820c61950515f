package config

import "time"

// Key documents one configuration key. Keys is the single list from which
// defaults, flags and docs/configuration.md are made.
type Key struct {
	Name    string
	Default any
	Usage   string
}

// Keys lists every scalar key with its default.
var Keys = []Key{
	{"database.url", "postgres://postgres@127.0.0.1:5432/spool?sslmode=disable", "PostgreSQL connection string: a URL (postgres://…) or key=value settings; passwords are redacted wherever it is logged"},
	{"database.max_conns", 8, "most connections a binary opens to PostgreSQL"},
	{"kafka.brokers", []string{"127.0.0.1:9092"}, "seed brokers (comma-separated in env)"},
	{"kafka.topic", "spool.commands", "topic that carries commands"},
	{"kafka.dlq_topic", "spool.commands.dlq", "dead-letter topic"},
	{"kafka.partitions", 12, "partitions when spool creates its topics"},
	{"kafka.replication_factor", -1, "replication factor when spool creates its topics (-1: broker default)"},
	{"kafka.max_message_bytes", 0, "max.message.bytes spool gives its topics when it creates them (0: ingress.max_record_bytes + 64 KiB, room for a record of that size with its headers and a dead letter of it)"},
	{"kafka.group", "spool-processor", "consumer group of the processors"},
	{"kafka.tls.enabled", false, "connect to the brokers over TLS (on by itself when any other kafka.tls key is set)"},
	{"kafka.tls.ca_file", "", "PEM file of the CAs that sign the brokers' certificates (empty: the system's roots)"},
	{"kafka.tls.cert_file", "", "PEM client certificate, for brokers that authenticate clients by certificate (mTLS); with kafka.tls.key_file"},
	{"kafka.tls.key_file", "", "PEM private key of kafka.tls.cert_file"},
	{"kafka.tls.server_name", "", "name the brokers' certificates must carry (empty: each broker's host)"},
	{"kafka.tls.insecure_skip_verify", false, "accept any broker certificate: for tests only, it gives up what TLS is for"},
	{"kafka.sasl.mechanism", "", "SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512, OAUTHBEARER or AWS_MSK_IAM (empty: no SASL)"},
	{"kafka.sasl.username", "", "SASL user (PLAIN, SCRAM); the access key id for AWS_MSK_IAM"},
	{"kafka.sasl.username_file", "", "file holding kafka.sasl.username (a mounted secret)"},
	{"kafka.sasl.password", "", "SASL password (PLAIN, SCRAM); the secret access key for AWS_MSK_IAM; never logged"},
	{"kafka.sasl.password_file", "", "file holding kafka.sasl.password (a mounted secret)"},
	{"kafka.sasl.token", "", "OAUTHBEARER token; the session token of temporary AWS_MSK_IAM credentials; never logged"},
	{"kafka.sasl.token_file", "", "file holding kafka.sasl.token (a mounted secret, refreshed by its owner: read at start-up)"},
	{"kafka.client_id", "spool", "client.id spool's Kafka clients send with every request: what brokers log requests and apply client quotas by"},
	{"kafka.group_protocol", "consumer", "consumer: KIP-848, the brokers assign partitions and a member joins or leaves without stopping the others (Kafka 4.0+; older brokers get classic); classic: the client-side cooperative rebalance"},
	{"http.addr", ":8080", "ingress listen address"},
	{"tracing.enabled", false, "export OpenTelemetry spans over OTLP/HTTP: an upload's, continuing its request's traceparent, and each processor batch's, linked to its uploads"},
	{"tracing.endpoint", "", "OTLP/HTTP base URL, e.g. http://otel-collector:4318 (empty: OTEL_EXPORTER_OTLP_ENDPOINT, else http://localhost:4318)"},
	{"tracing.sample_ratio", 1.0, "share of the traces that start in spool (uploads without a traceparent) that are kept; a traced request's own decision is followed"},
	{"client.server", "", "spoolctl upload and jobs: ingress's base URL, below --server and SPOOL_SERVER (servers ignore it)"},
	{"client.api_key_file", "", "spoolctl upload and jobs: a file holding the API key, below --api-key and SPOOL_API_KEY (servers ignore it)"},
	{"metrics.addr", ":9090", "processor metrics and health listen address"},
	{"metrics.pprof", false, "serve Go's /debug/pprof/ on the metrics listeners (metrics.addr, ingress.metrics_addr), never on the API port, for profiling"},
	{"processor.rate_limit", 0.0, "rows/s per processor, 0 = unlimited"},
	{"processor.batch_size", 3000, "flush a partition's batch at this many records"},
	{"processor.batch_max_wait", 100 * time.Millisecond, "flush a partition's batch when its oldest record is this old: below a backlog (which fills batches to batch_size), about how long a command waits before its write; shorter makes more, smaller batches"},
	{"processor.write_concurrency", 2, "batches one processor writes to PostgreSQL at once, its partitions together (the others wait their turn): about the cores PostgreSQL gives it, since concurrent bulk writes contend inside the database and more at once makes each command dearer; database.max_conns bounds it too"},
	{"processor.flush_timeout", 30 * time.Second, "how long the last flush on shutdown may take"},
	{"processor.session_timeout", 10 * time.Second, "how long the group waits for a processor that stopped heartbeating (it crashed) before its partitions move to the others"},
	{"processor.memory_limit", int64(0), "soft memory limit of the processor in bytes, for Go's garbage collector (0: none; GOMEMLIMIT wins when set)"},
	{"processor.queue", 1, "fetched slices that may wait per partition before its fetching pauses"},
	{"processor.fetch_max_bytes", 2 << 20, "most bytes one fetch response may hold, all partitions together"},
	{"processor.fetch_max_partition_bytes", 256 << 10, "most bytes one fetch may hold for one partition"},
	{"dedupe.window", 168 * time.Hour, "how long a command id is remembered"},
	{"dedupe.cache_size", 5000, "command ids each partition's worker keeps in memory to settle hot repeats without the database (0: off)"},
	{"jobs.retention", 720 * time.Hour, "finished jobs, their counts and failures are pruned this long after they finished"},
	{"jobs.open_timeout", time.Hour, "a job opened for parts that receives no part and is not completed for this long is failed"},
	{"ingress.metrics_addr", ":9091", "ingress metrics, health and (with metrics.pprof) profiling listen address, apart from the API's http.addr"},
	{"ingress.max_body_bytes", int64(10 << 30), "largest upload body in bytes (413 past it)"},
	{"ingress.max_record_bytes", 1 << 20, "largest single record in bytes"},
	{"ingress.max_records", 10_000_000, "most records in one upload"},
	{"ingress.idempotency_window", 24 * time.Hour, "how long an Idempotency-Key and its answer are kept"},
	{"ingress.read_idle_timeout", time.Minute, "an upload that sends nothing for this long is cut off (a slow healthy upload is not)"},
	{"ingress.max_lag", int64(0), "answer 429 while the processors' backlog exceeds this many commands (0: no bound)"},
	{"ingress.max_rejections", 100, "rejections listed in an upload's answer (all are in the failures listing)"},
	{"ingress.max_decompressed_bytes", int64(10 << 30), "largest upload body in bytes after Content-Encoding is undone, whitespace and blank lines included (413 past it)"},
	{"ingress.max_decompression_ratio", 100, "largest ratio of decompressed to sent bytes of a gzip upload, checked past its first MiB (413 past it; 0: no bound)"},
	{"ingress.max_concurrent_uploads", 32, "uploads one ingress reads at once, all tenants together (429 past it)"},
	{"ingress.max_concurrent_uploads_per_tenant", 8, "uploads one ingress reads at once for one tenant (429 past it)"},
	{"ingress.min_upload_bytes_per_second", 1024, "slowest average rate an upload may send at, counted after its first ingress.read_idle_timeout while ingress waits for it (0: no bound)"},
	{"auth.disabled", false, "serve without API keys (only for local use)"},
	{"auth.keys_file", "", "a YAML file of more API keys ({keys: [{tenant, key_sha256, entities}]}), e.g. a mounted secret"},
	{"log.level", "info", "debug, info, warn or error"},
	{"log.format", "text", "text or json"},
}
