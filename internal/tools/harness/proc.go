package harness

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Proc is one of spool's binaries run as its own process.
type Proc struct {
	Name   string
	cmd    *exec.Cmd
	log    LockedBuffer
	exited chan struct{}
}

// LockedBuffer collects a child's output while another goroutine reads it.
type LockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *LockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *LockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Start runs binDir/name with args and env added to this process's, its
// output kept for when it fails.
func Start(binDir, name string, env []string, args ...string) (*Proc, error) {
	cmd := exec.Command(filepath.Join(binDir, name), args...)
	cmd.Env = append(os.Environ(), env...)
	p := &Proc{Name: name, cmd: cmd, exited: make(chan struct{})}
	cmd.Stdout = &p.log
	cmd.Stderr = &p.log
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s (run `make build` first?): %w", name, err)
	}
	go func() { _ = cmd.Wait(); close(p.exited) }()
	return p, nil
}

// Log is the process's output so far.
func (p *Proc) Log() string { return p.log.String() }

// Exited is closed once the process has exited.
func (p *Proc) Exited() <-chan struct{} { return p.exited }

// Pid is the process's id.
func (p *Proc) Pid() int { return p.cmd.Process.Pid }

// Stop ends the process with SIGTERM and waits for it; past 30 s it kills it.
func (p *Proc) Stop() {
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		p.Kill()
	}
}

// Freeze stops the process where it is (SIGSTOP), as a long pause would,
// or a partition from everything it talks to; Thaw lets it go on (SIGCONT).
func (p *Proc) Freeze() error { return p.cmd.Process.Signal(syscall.SIGSTOP) }

// Thaw lets a frozen process go on.
func (p *Proc) Thaw() error { return p.cmd.Process.Signal(syscall.SIGCONT) }

// Kill ends the process with SIGKILL and waits for it.
func (p *Proc) Kill() {
	_ = p.cmd.Process.Kill()
	<-p.exited
}

// Usage is a process's CPU seconds (user and system) and peak RSS so far.
type Usage struct {
	CPU     time.Duration
	PeakRSS int64
}

// clockTicks is USER_HZ, 100 on every Linux this runs on.
const clockTicks = 100

// Usage reads the process's usage so far.
func (p *Proc) Usage() (Usage, error) { return ProcUsage(p.cmd.Process.Pid) }

// ProcUsage reads /proc/PID/stat and /proc/PID/status.
func ProcUsage(pid int) (Usage, error) {
	var u Usage
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// Fields after the parenthesised command name; utime and stime are
	// fields 14 and 15 of the whole line.
	rest := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+2:]))
	utime, _ := strconv.ParseInt(rest[11], 10, 64)
	stime, _ := strconv.ParseInt(rest[12], 10, 64)
	u.CPU = time.Duration(utime+stime) * time.Second / clockTicks
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return u, err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			u.PeakRSS = kb << 10
		}
	}
	return u, s.Err()
}

// CommandCPU is the CPU time spent so far by the processes named comm
// (as /proc/PID/stat names them, e.g. "postgres") and by their children
// that have exited and been waited for: a server's forked backends that
// come and go are counted once, whatever else runs on the machine.
func CommandCPU(comm string) (time.Duration, error) {
	dirs, err := os.ReadDir("/proc")
	if err != nil {
		return 0, err
	}
	var ticks int64
	for _, d := range dirs {
		if _, err := strconv.Atoi(d.Name()); err != nil {
			continue
		}
		stat, err := os.ReadFile("/proc/" + d.Name() + "/stat")
		if err != nil {
			continue // gone meanwhile
		}
		open, end := bytes.IndexByte(stat, '('), bytes.LastIndexByte(stat, ')')
		if open < 0 || end < open || string(stat[open+1:end]) != comm {
			continue
		}
		// utime, stime, cutime and cstime are fields 14 to 17 of the line.
		rest := strings.Fields(string(stat[end+2:]))
		for _, f := range rest[11:15] {
			n, _ := strconv.ParseInt(f, 10, 64)
			ticks += n
		}
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// MachineBusy is the CPU time every process on the machine has spent so
// far (user, nice, system, irq and softirq of /proc/stat's first line):
// the difference over a stage, less the processes measured one by one, is
// what the rest (PostgreSQL) took.
func MachineBusy() (time.Duration, error) {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, err
	}
	line, _, _ := strings.Cut(string(stat), "\n")
	f := strings.Fields(line) // cpu user nice system idle iowait irq softirq …
	if len(f) < 8 || f[0] != "cpu" {
		return 0, fmt.Errorf("unexpected /proc/stat: %q", line)
	}
	var ticks int64
	for _, i := range []int{1, 2, 3, 6, 7} {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("unexpected /proc/stat: %q", line)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / clockTicks, nil
}

// Sub is the usage since before: CPU spent in between, the peak so far.
func (u Usage) Sub(before Usage) Usage {
	return Usage{CPU: u.CPU - before.CPU, PeakRSS: u.PeakRSS}
}

// FreeAddr finds a free local port.
func FreeAddr() (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer ln.Close()
	return ln.Addr().String(), nil
}

// WaitFor polls ready until it succeeds, the process exits or a minute
// has passed.
func (p *Proc) WaitFor(ctx context.Context, what string, ready func() error) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	var err error
	for {
		if err = ready(); err == nil {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited: %w\n%s", p.Name, err, p.Log())
		case <-ctx.Done():
			return fmt.Errorf("%s not %s: %w\n%s", p.Name, what, err, p.Log())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// Dialable succeeds once addr accepts TCP connections.
func Dialable(addr string) func() error {
	return func() error {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
		}
		return err
	}
}

// HTTPOK succeeds once url answers 200.
func HTTPOK(url string) func() error {
	return func() error {
		res, err := http.Get(url)
		if err != nil {
			return err
		}
		defer res.Body.Close()
		_, _ = io.Copy(io.Discard, res.Body)
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, res.Status)
		}
		return nil
	}
}
