package cli

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/spoolhq/spool/dlq"
	"github.com/spoolhq/spool/internal/app"
	"github.com/spoolhq/spool/internal/config"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/postgres"
	"github.com/spoolhq/spool/pipeline"
)

func newDLQCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect and replay dead letters (talks to Kafka directly)",
		Long: `dlq reads the dead-letter topic directly from Kafka: list, stats and show explain
why commands died; replay sends them back to the commands topic once the cause is
fixed, after checking each against what spool recorded in the database.
Replayed commands pass the processor's dedupe ledger and version guard again,
so a replay never applies a command twice or overwrites newer data, and a
checkpoint topic makes running the same replay twice send nothing twice.`,
	}
	cmd.AddCommand(newDLQListCmd(), newDLQStatsCmd(), newDLQShowCmd(), newDLQReplayCmd())
	return cmd
}

// dlqFlags adds the connection flags every dlq command has.
func dlqFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringSlice("brokers", nil, "seed brokers (default: kafka.brokers, env SPOOL_KAFKA_BROKERS)")
	f.String("topic", "", "dead-letter topic (default: kafka.dlq_topic)")
	f.StringP("output", "o", "text", "text or json (NDJSON where a listing streams)")
	f.Bool("json", false, "the same as -o json (kept for scripts written before -o)")
}

// jsonOutput reports whether a dlq command prints JSON (-o json, or the
// older --json), refusing any other -o than text.
func jsonOutput(cmd *cobra.Command) (bool, error) {
	out, _ := cmd.Flags().GetString("output")
	old, _ := cmd.Flags().GetBool("json")
	if err := checkOutput(out, "text", "json"); err != nil {
		return false, err
	}
	return out == "json" || old, nil
}

// filterFlags adds the selection flags of list, stats and replay.
func filterFlags(cmd *cobra.Command) {
	f := cmd.Flags()
	f.String("job", "", "only this job's dead letters")
	f.String("tenant", "", "only this tenant's")
	f.String("error-class", "", "only this error class (see docs/operations.md)")
	f.String("entity", "", "only commands of this entity")
	f.String("since", "", "only those that last failed at or after this time (RFC 3339, or a duration ago: 2h)")
	f.String("until", "", "only those that last failed before this time (RFC 3339, or a duration ago)")
	f.Int32("partition", dlq.AllPartitions, "only this partition of the dead-letter topic")
}

// dlqTarget is where the dead letters are.
type dlqTarget struct {
	reader  kafka.Reader
	topic   string
	cluster kafka.Cluster
	replica int16
	// commands is the commands topic (kafka.topic), where replays go;
	// database the job ledger's URL (database.url), which replays check.
	commands string
	database string
}

func loadDLQTarget(cmd *cobra.Command) (*dlqTarget, error) {
	c, err := loadConfig(cmd, config.Options{Defaults: map[string]any{"auth.disabled": true}})
	if err != nil {
		return nil, err
	}
	if b, _ := cmd.Flags().GetStringSlice("brokers"); len(b) > 0 {
		c.Kafka.Brokers = b
	}
	cluster, err := app.KafkaCluster(c.Kafka) // kafka.tls.* and kafka.sasl.* as the servers have them
	if err != nil {
		return nil, withCode(ExitUsage, err)
	}
	t := &dlqTarget{cluster: cluster, topic: c.Kafka.DLQTopic, replica: int16(c.Kafka.ReplicationFactor),
		commands: c.Kafka.Topic, database: c.Database.URL}
	if topic, _ := cmd.Flags().GetString("topic"); topic != "" {
		t.topic = topic
	}
	t.reader = kafka.Reader{Cluster: t.cluster}
	return t, nil
}

// loadSelection is where the dead letters are and which of them the
// command's filter flags select.
func loadSelection(cmd *cobra.Command) (*dlqTarget, dlq.Filter, error) {
	t, err := loadDLQTarget(cmd)
	if err != nil {
		return nil, dlq.Filter{}, err
	}
	flt, err := parseFilter(cmd, time.Now())
	return t, flt, err
}

func parseFilter(cmd *cobra.Command, now time.Time) (dlq.Filter, error) {
	f := cmd.Flags()
	var flt dlq.Filter
	job, _ := f.GetString("job")
	flt.Job = pipeline.JobID(job)
	flt.Tenant, _ = f.GetString("tenant")
	class, _ := f.GetString("error-class")
	flt.ErrorClass = pipeline.ErrorClass(class)
	flt.Entity, _ = f.GetString("entity")
	if p, _ := f.GetInt32("partition"); p >= 0 {
		flt.Partition = &p
	} else if p != dlq.AllPartitions {
		return flt, fmt.Errorf("--partition %d: a partition is 0 or more (-1: all)", p)
	}
	var err error
	for _, b := range []struct {
		flag string
		t    *time.Time
	}{{"since", &flt.Since}, {"until", &flt.Until}} {
		v, _ := f.GetString(b.flag)
		if *b.t, err = parseWhen(v, now); err != nil {
			return flt, fmt.Errorf("--%s: %w", b.flag, err)
		}
	}
	return flt, nil
}

// parseWhen reads an RFC 3339 time or a duration before now.
func parseWhen(v string, now time.Time) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339, v); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("%q is neither an RFC 3339 time nor a positive duration", v)
	}
	return now.Add(-d), nil
}

// unreadable reports records of the dead-letter topic that are not dead
// letters (another tool wrote them), without stopping.
func unreadable(cmd *cobra.Command) func(pipeline.Record, error) {
	return func(r pipeline.Record, err error) {
		fmt.Fprintf(cmd.ErrOrStderr(), "skipping %d:%d: %s\n", r.Partition, r.Offset, shown(err.Error(), pipeline.MaxErrorBytes))
	}
}

func newDLQListCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List dead letters, oldest first per partition",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, flt, err := loadSelection(cmd)
			if err != nil {
				return err
			}
			asJSON, err := jsonOutput(cmd)
			if err != nil {
				return err
			}
			limit, _ := cmd.Flags().GetInt("limit")
			w := cmd.OutOrStdout()
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			if !asJSON {
				fmt.Fprintln(tw, "DEAD LETTER\tLAST FAILURE\tCLASS\tATTEMPT\tJOB\tINDEX\tCOMMAND\tENTITY\tERROR")
			}
			n := 0
			enc := json.NewEncoder(w)
			err = dlq.Scan(cmd.Context(), t.reader, t.topic, flt, func(e *dlq.Envelope) error {
				if limit > 0 && n >= limit {
					return dlq.ErrStop
				}
				n++
				if asJSON {
					return enc.Encode(viewOf(e))
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n", e.Coordinates(), e.LastFailure.Format(time.RFC3339),
					field(string(e.ErrorClass)), e.Attempt, field(string(e.JobID)), indexText(e.Index), field(string(e.CommandID)),
					field(e.Entity()), shown(e.Error, 120))
				return nil
			}, unreadable(cmd))
			if err != nil {
				return err
			}
			if !asJSON {
				if err := tw.Flush(); err != nil {
					return err
				}
				fmt.Fprintf(w, "%d dead letters in %s\n", n, t.topic)
			}
			return nil
		},
	}
	dlqFlags(cmd)
	filterFlags(cmd)
	cmd.Flags().Int("limit", 0, "list at most this many (0: all)")
	return cmd
}

func newDLQStatsCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Count dead letters by error class, job and entity",
		Args:  usageArgs(cobra.NoArgs),
		RunE: func(cmd *cobra.Command, _ []string) error {
			t, flt, err := loadSelection(cmd)
			if err != nil {
				return err
			}
			st := dlq.NewStats()
			err = dlq.Scan(cmd.Context(), t.reader, t.topic, flt, func(e *dlq.Envelope) error {
				st.Add(e)
				return nil
			}, func(r pipeline.Record, err error) {
				st.Unreadable++
				unreadable(cmd)(r, err)
			})
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			if asJSON, err := jsonOutput(cmd); err != nil {
				return err
			} else if asJSON {
				return writeJSONOut(w, st)
			}
			fmt.Fprintf(w, "%d dead letters in %s\n", st.Total, t.topic)
			for _, g := range []struct {
				title string
				m     map[string]int
			}{{"ERROR CLASS", st.ByClass}, {"JOB", st.ByJob}, {"ENTITY", st.ByEntity}} {
				fmt.Fprintln(w)
				tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
				fmt.Fprintf(tw, "%s\tCOUNT\n", g.title)
				for _, k := range byCount(g.m) {
					fmt.Fprintf(tw, "%s\t%d\n", field(k), g.m[k])
				}
				if err := tw.Flush(); err != nil {
					return err
				}
			}
			return nil
		},
	}
	dlqFlags(cmd)
	filterFlags(cmd)
	return cmd
}

func newDLQShowCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "show PARTITION:OFFSET",
		Short: "Show one dead letter with every header and its value pretty-printed",
		Args:  usageArgs(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, args []string) error {
			p, o, err := parseCoordinates(args[0])
			if err != nil {
				return err
			}
			t, err := loadDLQTarget(cmd)
			if err != nil {
				return err
			}
			rec, err := t.reader.ReadOne(cmd.Context(), t.topic, p, o)
			if err != nil {
				return err
			}
			w := cmd.OutOrStdout()
			e, perr := dlq.Parse(rec)
			if asJSON, err := jsonOutput(cmd); err != nil {
				return err
			} else if asJSON {
				if perr != nil {
					return perr
				}
				return writeJSONOut(w, viewOf(e))
			}
			fmt.Fprintf(w, "dead letter %d:%d of %s, written %s\n", rec.Partition, rec.Offset, field(t.topic), rec.Timestamp.UTC().Format(time.RFC3339Nano))
			if perr != nil {
				fmt.Fprintf(w, "not a spool dead letter: %s\n", shown(perr.Error(), pipeline.MaxErrorBytes))
			}
			fmt.Fprintf(w, "\nkey: %s\n\nheaders:\n", pipeline.Printable(string(rec.Key), maxShownField))
			tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
			for _, h := range rec.Headers {
				fmt.Fprintf(tw, "  %s\t%s\n", pipeline.Printable(h.Key, maxShownField), pipeline.Printable(string(h.Value), maxShownField))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintf(w, "\nvalue:\n%s\n", pretty(rec.Value))
			return nil
		},
	}
	dlqFlags(cmd)
	return cmd
}

func newDLQReplayCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Send dead letters back to the commands topic, once the cause is fixed",
		Long: `replay sends the selected dead letters back to the commands topic (kafka.topic),
with their original key, value and headers, the next attempt number and a
spool-replay-of header. Each one sent is recorded in the checkpoint topic
(DLQ_TOPIC.replayed), so running the same replay again sends nothing twice. A
dead letter whose command has failed --max-attempts times is parked: left in
the dead-letter topic and reported, not sent round again.

The dead-letter topic is not trusted: each dead letter is checked against the
failure row spool recorded when it dead-lettered the command (database.url):
its job, index, tenant, command id and value must match, and its source-topic
header must name kafka.topic (or use --to-topic). Anything else is refused,
reported and counted, never sent. A dead letter whose value was cut to fit the
dead-letter topic is sent with the whole command kept in that row.`,
		Args: usageArgs(cobra.NoArgs),
		RunE: runReplay,
	}
	dlqFlags(cmd)
	filterFlags(cmd)
	f := cmd.Flags()
	f.Bool("dry-run", false, "print what would be sent, send nothing")
	f.Int("limit", 0, "send at most this many (0: all)")
	f.Float64("rate", 0, "send at most this many per second (0: no bound)")
	f.Int("max-attempts", 5, "park dead letters whose command failed this many times (0: never)")
	f.String("to-topic", "", "send to this topic instead of kafka.topic, whatever a dead letter's source-topic header says")
	config.AddFlags(f, nil, "database.url")
	return cmd
}

func runReplay(cmd *cobra.Command, _ []string) error {
	f := cmd.Flags()
	t, flt, err := loadSelection(cmd)
	if err != nil {
		return err
	}
	asJSON, err := jsonOutput(cmd)
	if err != nil {
		return err
	}
	dry, _ := f.GetBool("dry-run")
	limit, _ := f.GetInt("limit")
	perSecond, _ := f.GetFloat64("rate")
	maxAttempts, _ := f.GetInt("max-attempts")
	if perSecond < 0 || limit < 0 || maxAttempts < 0 {
		return fmt.Errorf("--rate, --limit and --max-attempts cannot be negative")
	}
	toTopic, _ := f.GetString("to-topic")
	ctx := cmd.Context()
	pool, err := postgres.Open(ctx, t.database, 2)
	if err != nil {
		return err
	}
	defer pool.Close()
	opts := dlq.ReplayOptions{Topic: t.commands, Ledger: postgres.NewStore(pool, nil, "", nil),
		Filter: flt, Limit: limit, MaxAttempts: maxAttempts, Unreadable: unreadable(cmd)}
	if toTopic != "" {
		opts.Topic, opts.AnySource = toTopic, true
	}
	out, errOut := cmd.OutOrStdout(), cmd.ErrOrStderr()

	// A dry run first: it is the output of --dry-run, and otherwise the
	// total of the progress bar.
	opts.DryRun = true
	if dry {
		opts.OnRecord = func(e *dlq.Envelope, a dlq.Action) {
			if asJSON {
				_ = json.NewEncoder(out).Encode(struct {
					Action dlq.Action `json:"action"`
					envelopeView
				}{a, viewOf(e)})
				return
			}
			if a == dlq.ActionRefuse {
				return // listed with the reasons below
			}
			fmt.Fprintf(out, "%-17s %s → %s (attempt %d) job %s index %s command %s: %s\n", a, e.Coordinates(), field(opts.Topic),
				e.Attempt+1, field(string(e.JobID)), indexText(e.Index), field(string(e.CommandID)), shown(e.Error, 60))
		}
	}
	plan, err := dlq.Replay(ctx, t.reader, nil, t.topic, opts)
	if err != nil || dry {
		if err == nil {
			err = printReplay(out, plan, asJSON)
		}
		return err
	}

	// Only the checkpoint's keys matter: compaction keeps it small.
	if err := kafka.EnsureTopicsWith(ctx, t.cluster, 1, t.replica, map[string]string{"cleanup.policy": "compact"},
		dlq.CheckpointTopic(t.topic)); err != nil {
		return err
	}
	producer, err := kafka.NewProducer(kafka.ProducerConfig{Cluster: t.cluster, Logger: app.NewLogger(config.Log{Level: "error"})})
	if err != nil {
		return err
	}
	defer producer.Close()
	opts.DryRun, opts.OnRecord = false, nil
	if perSecond > 0 {
		opts.Limiter = app.NewRateLimiter(perSecond, 1)
	}
	if plan.Replayed > 0 && term.IsTerminal(int(os.Stderr.Fd())) {
		bar := progressbar.NewOptions(plan.Replayed, progressbar.OptionSetDescription("replaying"),
			progressbar.OptionSetWriter(errOut), progressbar.OptionShowCount(), progressbar.OptionShowIts(),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(errOut) }))
		opts.OnRecord = func(_ *dlq.Envelope, a dlq.Action) {
			if a == dlq.ActionReplay {
				_ = bar.Add(1)
			}
		}
		defer bar.Finish() //nolint:errcheck // cosmetic
	} else if plan.Replayed > 0 {
		fmt.Fprintf(errOut, "replaying %d dead letters from %s\n", plan.Replayed, t.topic)
	}
	res, err := dlq.Replay(ctx, t.reader, producer, t.topic, opts)
	if perr := printReplay(out, res, asJSON); err == nil {
		err = perr
	}
	return err
}

func printReplay(w io.Writer, r dlq.ReplayResult, asJSON bool) error {
	if asJSON {
		return writeJSONOut(w, r)
	}
	for _, f := range r.Refusals {
		fmt.Fprintf(w, "%-17s %s job %s index %s command %s: %s\n", dlq.ActionRefuse, f.DeadLetter,
			field(string(f.JobID)), indexText(f.Index), field(string(f.CommandID)), pipeline.Printable(f.Reason, pipeline.MaxErrorBytes))
	}
	if more := r.Refused - len(r.Refusals); more > 0 {
		fmt.Fprintf(w, "(%d more refused)\n", more)
	}
	verb := "replayed"
	if r.DryRun {
		verb = "would replay"
	}
	_, err := fmt.Fprintf(w, "%s %d of %d selected dead letters; %d already replayed, %d parked at the attempt bound, %d refused\n",
		verb, r.Replayed, r.Selected, r.AlreadyReplayed, r.Parked, r.Refused)
	return err
}

// envelopeView is a dead letter as --json prints it.
type envelopeView struct {
	DeadLetter      string            `json:"dead_letter"`
	Topic           string            `json:"topic"`
	Partition       int32             `json:"partition"`
	Offset          int64             `json:"offset"`
	ErrorClass      string            `json:"error_class"`
	Error           string            `json:"error"`
	Attempt         int               `json:"attempt"`
	FirstFailure    time.Time         `json:"first_failure"`
	LastFailure     time.Time         `json:"last_failure"`
	SourceTopic     string            `json:"source_topic"`
	SourcePartition int32             `json:"source_partition"`
	SourceOffset    int64             `json:"source_offset"`
	JobID           string            `json:"job_id,omitempty"`
	Tenant          string            `json:"tenant,omitempty"`
	Index           *int64            `json:"index,omitempty"`
	CommandID       string            `json:"command_id"`
	Entity          string            `json:"entity,omitempty"`
	Processor       string            `json:"processor,omitempty"`
	ReplayOf        string            `json:"replay_of,omitempty"`
	Key             string            `json:"key"`
	Value           json.RawMessage   `json:"value"`
	Headers         map[string]string `json:"headers,omitempty"`
}

func viewOf(e *dlq.Envelope) envelopeView {
	v := envelopeView{
		DeadLetter: e.Coordinates(), Topic: e.Topic, Partition: e.Partition, Offset: e.Offset,
		ErrorClass: string(e.ErrorClass), Error: e.Error, Attempt: e.Attempt,
		FirstFailure: e.FirstFailure, LastFailure: e.LastFailure,
		SourceTopic: e.SourceTopic, SourcePartition: e.SourcePartition, SourceOffset: e.SourceOffset,
		JobID: string(e.JobID), Tenant: e.Tenant, CommandID: string(e.CommandID), Entity: e.Entity(),
		Processor: e.Instance, ReplayOf: e.ReplayOf, Key: textOf(e.Key), Value: e.Value,
	}
	if e.Index >= 0 {
		v.Index = &e.Index
	}
	if !json.Valid(e.Value) {
		v.Value, _ = json.Marshal(textOf(e.Value))
	}
	if len(e.Headers) > 0 {
		v.Headers = map[string]string{}
		for _, h := range e.Headers {
			v.Headers[h.Key] = textOf(h.Value)
		}
	}
	return v
}

func parseCoordinates(s string) (int32, int64, error) {
	ps, offs, ok := strings.Cut(s, ":")
	p, perr := strconv.ParseInt(ps, 10, 32)
	o, oerr := strconv.ParseInt(offs, 10, 64)
	if !ok || perr != nil || oerr != nil || p < 0 || o < 0 {
		return 0, 0, fmt.Errorf("%q is not PARTITION:OFFSET (as dlq list prints it, e.g. 3:41)", s)
	}
	return int32(p), o, nil
}

// textOf shows bytes as text in --json output when they are UTF-8,
// quoted otherwise; the JSON encoder escapes control characters.
func textOf(b []byte) string {
	if utf8.Valid(b) {
		return string(b)
	}
	return strconv.Quote(string(b))
}

// Human output is written to a terminal: every piece of it that a client,
// a database or another Kafka client wrote goes through pipeline.Printable,
// so that no escape sequence (an OSC retitling the window, a cursor move,
// a carriage return overwriting the line) reaches the operator raw.
const (
	// maxShownField bounds an id, a key, a header or a name in a table.
	maxShownField = 256
	// maxShownLine bounds one line of a pretty-printed value.
	maxShownLine = 64 << 10
)

// pretty indents a JSON value and shows anything else as printable text.
// Valid JSON holds no raw control character below 0x20, but its strings
// may hold DEL, C1 controls and format characters (U+202E reverses the
// line), so each line is made printable too.
func pretty(b []byte) string {
	var buf bytes.Buffer
	if json.Indent(&buf, b, "", "  ") != nil {
		return pipeline.Printable(string(b), maxShownLine)
	}
	lines := strings.Split(buf.String(), "\n")
	for i, l := range lines {
		lines[i] = pipeline.Printable(l, maxShownLine)
	}
	return strings.Join(lines, "\n")
}

// shown is a message on one line: runs of white space (a newline or a
// carriage return among them) become one space, then it is made printable
// and cut after about n bytes.
func shown(s string, n int) string {
	return pipeline.Printable(strings.Join(strings.Fields(s), " "), n)
}

// field is an id, a name or a class in a table: printable, bounded, "-"
// when empty.
func field(s string) string { return orDash(pipeline.Printable(s, maxShownField)) }

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func indexText(i int64) string {
	if i < 0 {
		return "-"
	}
	return strconv.FormatInt(i, 10)
}

// byCount orders keys by count, largest first, then by name.
func byCount(m map[string]int) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	return keys
}
