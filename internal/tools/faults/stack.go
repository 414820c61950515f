package faults

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spoolhq/spool/internal/tools/harness"
)

// The run's topic, dead-letter topic and processor group.
const (
	topic    = "faults.commands"
	dlqTopic = "faults.commands.dlq"
	group    = "spool-faults"
)

// appName is the application_name the run's processes connect to
// PostgreSQL with, so that backend terminations hit this run's alone.
func (c Config) appName() string { return "spool-faults:" + c.Schema }

// stack is the run's processes: one broker, one ingress and a changing
// set of processors, each restartable where it ran before.
type stack struct {
	cfg         Config
	dir         string
	dbURL       string
	brokerAddr  string
	ingressAddr string
	config      string
	// proxy stands between every client and the broker, which advertises
	// it: it cuts processors off from the broker (cutProcessor).
	proxy *harness.KafkaProxy

	mu         sync.Mutex
	broker     *harness.Proc
	ingress    *harness.Proc
	processors map[string]*harness.Proc
	named      int
	// gone are processes that were stopped or killed: their logs are kept
	// for a failed run.
	gone []*harness.Proc
	// peakRSS is the largest peak RSS of a processor seen (notePeak).
	peakRSS int64
	// mostProcessors is the most processors that ran at once.
	mostProcessors int
}

// rateBurst is the processors' batch size under a rate limit, which is
// also their limiter's burst: what a processor may write at once.
const rateBurst = 3000

func newStack(cfg Config, dir, dbURL string) (*stack, error) {
	s := &stack{cfg: cfg, dir: dir, dbURL: dbURL, processors: map[string]*harness.Proc{}}
	var err error
	if s.brokerAddr, err = harness.FreeAddr(); err != nil {
		return nil, err
	}
	if s.ingressAddr, err = harness.FreeAddr(); err != nil {
		return nil, err
	}
	if s.proxy, err = harness.NewKafkaProxy(s.brokerAddr); err != nil {
		return nil, err
	}
	s.config = filepath.Join(dir, "spool.yaml")
	level := "warn"
	if cfg.Log != nil {
		level = "info"
	}
	text := fmt.Sprintf(`database: {url: %q}
kafka: {brokers: [%q], partitions: %d, topic: %q, dlq_topic: %q, group: %q}
auth: {disabled: true}
http: {addr: %q}
metrics: {addr: "127.0.0.1:0"}
ingress: {metrics_addr: "127.0.0.1:0"}
entities:
  customers: {table: %s.customers, key: [customer_id], version_column: version}
  events: {table: %[8]s.events, key: [event_id]}
log: {level: %s}
`, dbURL, s.proxy.Addr(), cfg.Partitions, topic, dlqTopic, group, s.ingressAddr, cfg.Schema, level)
	if cfg.RateLimit > 0 {
		text += fmt.Sprintf("processor: {rate_limit: %g, batch_size: %d}\n", cfg.RateLimit, rateBurst)
	}
	if err := os.WriteFile(s.config, []byte(text), 0o600); err != nil {
		s.proxy.Close()
		return nil, err
	}
	return s, nil
}

func (s *stack) start(ctx context.Context) error {
	if err := s.startBroker(ctx); err != nil {
		return err
	}
	if err := s.startIngress(ctx); err != nil {
		return err
	}
	for range s.cfg.Processors {
		if _, err := s.addProcessor(ctx); err != nil {
			return err
		}
	}
	return nil
}

// run starts binary name of the run's configuration, with env besides.
func (s *stack) run(env []string, name string, args ...string) (*harness.Proc, error) {
	return harness.Start(s.cfg.BinDir, name, append([]string{"SPOOL_CONFIG=" + s.config}, env...), args...)
}

// startBroker starts the broker on its address and data directory, with
// every produce synced to disk before it is acknowledged. It advertises the
// proxy, so that every client reaches it through the proxy.
func (s *stack) startBroker(ctx context.Context) error {
	p, err := s.run(nil, "spoolctl", "broker", "--addr", s.brokerAddr, "--advertise", s.proxy.Addr(), "--data-dir", filepath.Join(s.dir, "broker"),
		"--partitions", fmt.Sprint(s.cfg.Partitions), "--sync-writes")
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.broker = p
	s.mu.Unlock()
	return p.WaitFor(ctx, "listening", harness.Dialable(s.brokerAddr))
}

func (s *stack) startIngress(ctx context.Context) error {
	p, err := s.run(nil, "ingress")
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.ingress = p
	s.mu.Unlock()
	return p.WaitFor(ctx, "ready", harness.HTTPOK("http://"+s.ingressAddr+"/readyz"))
}

// addProcessor starts one more processor and returns its name. It does
// not wait for it: a processor joins its group on its own time.
func (s *stack) addProcessor(context.Context) (string, error) {
	s.mu.Lock()
	s.named++
	name := fmt.Sprintf("processor-%d", s.named)
	s.mu.Unlock()
	return name, s.startProcessor(name)
}

// startProcessor starts a processor whose Kafka client.id is its name, by
// which the proxy knows its connections.
func (s *stack) startProcessor(name string) error {
	p, err := s.run([]string{"SPOOL_KAFKA_CLIENT_ID=" + name}, "processor")
	if err != nil {
		return err
	}
	p.Name = name
	s.mu.Lock()
	s.processors[name] = p
	s.mostProcessors = max(s.mostProcessors, len(s.processors))
	s.mu.Unlock()
	return nil
}

// pickProcessor names a running processor at random.
func (s *stack) pickProcessor(r *rand.Rand) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.processors))
	for n := range s.processors {
		names = append(names, n)
	}
	sort.Strings(names)
	return names[r.IntN(len(names))]
}

func (s *stack) processorCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.processors)
}

// freezeProcessor freezes a running processor, picked at random, and
// returns its name and what thaws it. Until then it counts as stopped:
// no other fault picks it.
func (s *stack) freezeProcessor(r *rand.Rand) (string, func() error, error) {
	name := s.pickProcessor(r)
	s.mu.Lock()
	p := s.processors[name]
	delete(s.processors, name)
	s.mu.Unlock()
	if err := p.Freeze(); err != nil {
		return "", nil, err
	}
	return name, func() error {
		err := p.Thaw()
		s.mu.Lock()
		s.processors[name] = p
		s.mu.Unlock()
		return err
	}, nil
}

// removeProcessor stops name, SIGKILL or SIGTERM.
func (s *stack) removeProcessor(name string, kill bool) {
	s.mu.Lock()
	p := s.processors[name]
	delete(s.processors, name)
	s.gone = append(s.gone, p)
	s.mu.Unlock()
	s.notePeak(p)
	if kill {
		p.Kill()
	} else {
		p.Stop()
	}
}

// notePeak keeps the largest peak RSS of a processor seen so far.
func (s *stack) notePeak(p *harness.Proc) {
	u, err := p.Usage()
	if err != nil {
		return // exited already
	}
	s.mu.Lock()
	s.peakRSS = max(s.peakRSS, u.PeakRSS)
	s.mu.Unlock()
}

// processorsPeakRSS is the largest peak RSS of any processor of the run
// (each stopped one read before it stopped).
func (s *stack) processorsPeakRSS() int64 {
	s.mu.Lock()
	live := make([]*harness.Proc, 0, len(s.processors))
	for _, p := range s.processors {
		live = append(live, p)
	}
	s.mu.Unlock()
	for _, p := range live {
		s.notePeak(p)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.peakRSS
}

// killIngress SIGKILLs ingress, and killBroker the broker.
func (s *stack) killIngress() { s.kill(&s.ingress) }
func (s *stack) killBroker()  { s.kill(&s.broker) }

func (s *stack) kill(slot **harness.Proc) {
	s.mu.Lock()
	p := *slot
	s.gone = append(s.gone, p)
	s.mu.Unlock()
	p.Kill()
}

// restartPostgres runs the configured restart command.
func (s *stack) restartPostgres(ctx context.Context) error {
	cmd := exec.CommandContext(ctx, "sh", "-c", s.cfg.PostgresRestart)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("restarting PostgreSQL (%s): %w: %s", s.cfg.PostgresRestart, err, out)
	}
	return nil
}

// live lists the running processes, ingress first and the broker last
// (the order they stop in); with gone, the stopped and killed ones too.
func (s *stack) live(gone bool) []*harness.Proc {
	s.mu.Lock()
	defer s.mu.Unlock()
	procs := []*harness.Proc{s.ingress}
	for _, p := range s.processors {
		procs = append(procs, p)
	}
	procs = append(procs, s.broker)
	if gone {
		procs = append(procs, s.gone...)
	}
	return slices.DeleteFunc(procs, func(p *harness.Proc) bool { return p == nil })
}

// dead lists the processes that exited without being told to, with the
// end of their logs.
func (s *stack) dead() []string {
	var out []string
	for _, p := range s.live(false) {
		select {
		case <-p.Exited():
			out = append(out, fmt.Sprintf("%s exited:\n%s", p.Name, tail(p.Log(), 30)))
		default:
		}
	}
	return out
}

// logs is the end of every process's log, for a failed run.
func (s *stack) logs() string {
	var b strings.Builder
	for _, p := range s.live(true) {
		if l := tail(p.Log(), 15); l != "" {
			fmt.Fprintf(&b, "--- %s (pid %d)\n%s\n", p.Name, p.Pid(), l)
		}
	}
	return b.String()
}

// saveLogs writes every process's log into the run's directory.
func (s *stack) saveLogs() {
	for _, p := range s.live(true) {
		_ = os.WriteFile(filepath.Join(s.dir, fmt.Sprintf("%s-%d.log", p.Name, p.Pid())), []byte(p.Log()), 0o600)
	}
}

// stop ends every running process with SIGTERM, the broker last, then
// the proxy.
func (s *stack) stop() {
	for _, p := range s.live(false) {
		p.Stop()
	}
	s.proxy.Close()
}

// tail is the last n lines of log.
func tail(log string, n int) string {
	lines := strings.Split(strings.TrimRight(log, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// withParams adds query parameters to a database URL.
func withParams(dbURL string, kv ...string) (string, error) {
	u, err := url.Parse(dbURL)
	if err != nil {
		return "", errors.New("parsing database url: not a URL (not shown: it may hold a password)")
	}
	q := u.Query()
	for i := 0; i+1 < len(kv); i += 2 {
		q.Set(kv[i], kv[i+1])
	}
	u.RawQuery = q.Encode()
	return u.String(), nil
}

// waitAfter sleeps a random time in [lo, hi).
func waitAfter(ctx context.Context, r *rand.Rand, lo, hi time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(lo + time.Duration(r.Int64N(int64(hi-lo)))):
	}
}
