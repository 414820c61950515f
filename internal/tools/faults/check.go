package faults

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/spoolhq/spool/dlq"
	"github.com/spoolhq/spool/internal/kafka"
	"github.com/spoolhq/spool/internal/tools/tooldb"
	"github.com/spoolhq/spool/pipeline"
)

// verdict is what the checker found.
type verdict struct {
	Commands, Rejects, Poison, Deletes int
	// Writes is the audit's count of committed writes.
	Writes int64
	// Lost are accepted commands neither written (nor superseded by a
	// written newer version) nor dead-lettered; Doubled, writes past a
	// command's first.
	Lost, Doubled int
	// Misplaced are good commands in the dead-letter topic or the
	// failures, and poison or rejected commands missing from them.
	Misplaced int
	// Rows are table rows that differ from the oracle (missing, extra or
	// other values); Jobs, jobs whose counts are wrong or do not agree
	// with the audit, or that never finished.
	Rows, Jobs int
	// Abandoned are jobs no client got an answer for (their ingress died
	// or answered 5xx), failed as they should be; Unanswered, jobs whose
	// ingress finished the upload and died before its answer reached the
	// client (which resent it under another job): complete, every
	// accepted command with an outcome.
	Abandoned, Unanswered int
	Problems              []string
}

func (v *verdict) ok() bool {
	return v.Lost+v.Doubled+v.Misplaced+v.Rows+v.Jobs == 0 && len(v.Problems) == 0
}

// problem notes one broken invariant (the first few are kept in full).
func (v *verdict) problem(counter *int, format string, args ...any) {
	if counter != nil {
		*counter++
	}
	if len(v.Problems) < 20 {
		v.Problems = append(v.Problems, fmt.Sprintf(format, args...))
	}
}

// check compares the database, the dead-letter topic and the jobs with the
// workload and the clients' answers.
func check(ctx context.Context, a *tooldb.Audit, brokers []string, w *workload, answers []answer) (*verdict, error) {
	v := &verdict{Commands: len(w.cmds)}
	writes, err := a.AuditWrites(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading the audit: %w", err)
	}
	failures, err := a.Failures(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading job failures: %w", err)
	}
	jobs, err := a.Jobs(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading jobs: %w", err)
	}
	dead := map[string]bool{}
	err = kafka.Reader{Cluster: kafka.Plaintext(brokers...)}.Read(ctx, dlqTopic, -1, func(r pipeline.Record) error {
		e, err := dlq.Parse(r)
		if err != nil {
			return err
		}
		dead[string(e.CommandID)] = true
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading the dead-letter topic: %w", err)
	}
	failed := map[string]string{}       // command id → outcome
	jobFailed := map[[2]string]string{} // job and command id → outcome
	for _, f := range failures {
		failed[f.ID] = f.Outcome
		jobFailed[[2]string{f.Job, f.ID}] = f.Outcome
	}

	// Each command id at most once; the newest version of a key written,
	// by an upsert or a delete (its tombstone).
	known := map[string]*command{}
	newest := map[string]int64{} // customers key → highest written version
	for i := range w.cmds {
		c := &w.cmds[i]
		known[c.ID] = c
		if c.Entity == customers && writes[c.ID] > 0 {
			newest[c.Key] = max(newest[c.Key], c.Version)
		}
	}
	tombstones, err := a.Tombstones(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading tombstones: %w", err)
	}
	for key, version := range tombstones {
		var values []string
		if err := json.Unmarshal([]byte(key), &values); err != nil || len(values) != 1 {
			return nil, fmt.Errorf("tombstone key %q is not one customer id", key)
		}
		newest[values[0]] = max(newest[values[0]], version)
	}
	for id, n := range writes {
		v.Writes += int64(n)
		if known[id] == nil {
			v.problem(&v.Doubled, "the audit holds a write of %q, a command never sent", id)
		}
		if n > 1 {
			v.Doubled += n - 1
			v.problem(nil, "command %s was written %d times", id, n)
		}
	}
	for id := range dead {
		if c := known[id]; c == nil || !c.Poison {
			v.problem(&v.Misplaced, "command %s, not poison, is in the dead-letter topic", id)
		}
	}
	for i := range w.cmds {
		c := &w.cmds[i]
		if c.Repeat >= 0 {
			continue // its original stands for it
		}
		n := writes[c.ID]
		switch {
		case c.Reject:
			v.Rejects++
			if n > 0 || failed[c.ID] != string(pipeline.OutcomeRejected) {
				v.problem(&v.Misplaced, "rejected command %s: %d writes, failure outcome %q", c.ID, n, failed[c.ID])
			}
		case c.Poison && c.Entity == customers && newest[c.Key] > c.Version && failed[c.ID] == "":
			// Stale: a newer version was written first, so it never reached
			// the table. It may still sit in the dead-letter topic: an
			// attempt that published it was fenced or killed before its
			// commit, and the next attempt found it stale. Such an orphan
			// has no failure row, so a replay refuses it.
			v.Poison++
		case c.Poison:
			v.Poison++
			if n > 0 || !dead[c.ID] || failed[c.ID] != string(pipeline.OutcomeDeadLettered) {
				v.problem(&v.Misplaced, "poison command %s: %d writes, in the DLQ %t, failure outcome %q", c.ID, n, dead[c.ID], failed[c.ID])
			}
		case c.Delete:
			// Its write is the row's absence (the oracle) and its
			// tombstone: the audit sees neither.
			v.Deletes++
			if failed[c.ID] != "" {
				v.problem(&v.Misplaced, "good delete %s is in its job's failures as %s", c.ID, failed[c.ID])
			}
		case n == 0 && (c.Entity == events || newest[c.Key] <= c.Version):
			v.problem(&v.Lost, "command %s (%s %s) was accepted and never written, nor superseded", c.ID, c.Entity, c.Key)
		case failed[c.ID] != "":
			v.problem(&v.Misplaced, "good command %s is in its job's failures as %s", c.ID, failed[c.ID])
		}
	}

	custs, evs := w.oracle()
	for table, want := range map[string]map[string]string{customers: custs, events: evs} {
		cols := map[string][]string{customers: {"name", "balance", "version", "cmd"}, events: {"customer_id", "amount", "cmd"}}[table]
		key := map[string]string{customers: "customer_id", events: "event_id"}[table]
		got, err := a.Dump(ctx, table, key, cols...)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", table, err)
		}
		for k, row := range want {
			if got[k] != row {
				v.problem(&v.Rows, "%s %s is %q, the oracle says %q", table, k, got[k], row)
			}
		}
		for k, row := range got {
			if _, ok := want[k]; !ok {
				v.problem(&v.Rows, "%s %s is %q and should not exist", table, k, row)
			}
		}
	}

	v.checkJobs(w, answers, jobs, writes, jobFailed, newest)
	return v, nil
}

// checkJobs checks each answered job's counts against its upload and the
// audit, that every other job failed, and that all jobs together counted
// the audit's writes as applied, and each delete at most once besides. A
// poison command is dead-lettered by the job, with a failure row of its
// own, unless a newer version of its key superseded it: a resent upload's
// copy of one may meet that newer version in its batch, where the first
// copy did not, and be stale there, or be a duplicate of an earlier
// attempt's copy that was stale (failed holds each job's failures; newest,
// each key's newest version written, by an upsert or a delete).
func (v *verdict) checkJobs(w *workload, answers []answer, jobs map[string]*tooldb.AuditJob, writes map[string]int,
	failed map[[2]string]string, newest map[string]int64) {
	uploadsOf := map[string]int{} // command id → uploads it is in
	for _, u := range w.uploads {
		for _, i := range u {
			uploadsOf[w.cmds[i].ID]++
		}
	}
	answered := map[string]bool{}
	for _, ans := range answers {
		if ans.View == nil {
			continue
		}
		id := string(ans.View.JobID)
		answered[id] = true
		j := jobs[id]
		if j == nil {
			v.problem(&v.Jobs, "job %s of upload %d is missing", id, ans.Upload)
			continue
		}
		var n, rejects, poison, superseded, sure, maybe int64
		for _, i := range w.uploads[ans.Upload] {
			c := &w.cmds[i]
			n++
			switch {
			case c.Reject:
				rejects++
			case c.Poison && failed[[2]string{id, c.ID}] == string(pipeline.OutcomeDeadLettered):
				poison++ // dead-lettered, not stale (whatever orphans the topic holds)
			case c.Poison && c.Entity == customers && newest[c.Key] > c.Version:
				superseded++ // stale, or a duplicate of an earlier attempt's copy that was: counted so below
			case c.Poison:
				v.problem(&v.Jobs, "job %s (upload %d): poison command %s was neither dead-lettered by it nor superseded", id, ans.Upload, c.ID)
			case c.Delete:
				maybe++ // applied or stale: the audit does not see deletes
			case writes[c.ID] > 0 && uploadsOf[c.ID] == 1 && ans.Attempts == 1:
				sure++ // written, and by no other job
			case writes[c.ID] > 0:
				maybe++ // written, by this job or another copy's
			}
		}
		state := pipeline.JobCompleted
		if rejects+poison > 0 {
			state = pipeline.JobCompletedWithErrors
		}
		want := tooldb.AuditJob{ID: id, State: string(state), Received: n, Accepted: n - rejects, Rejected: rejects,
			Counts: pipeline.Counts{DeadLettered: poison}, Failed: rejects + poison}
		got := *j
		got.Applied, got.Duplicate, got.Stale, got.Conflict, got.Error = 0, 0, 0, 0, ""
		if got != want || j.Outcomes() != n-rejects || j.Applied < sure || j.Applied > sure+maybe || j.Conflict != 0 || j.Stale+j.Duplicate < superseded {
			v.problem(&v.Jobs, "job %s (upload %d, %d attempts): %+v; expected %+v with outcomes = accepted, %d to %d applied by the audit and at least %d stale or duplicate",
				id, ans.Upload, ans.Attempts, *j, want, sure, sure+maybe, superseded)
		}
	}
	var applied, deletes int64
	for i := range w.cmds {
		if c := &w.cmds[i]; c.Delete && !c.Reject && c.Repeat < 0 {
			deletes++
		}
	}
	for id, j := range jobs {
		applied += j.Applied
		if answered[id] {
			continue
		}
		finished := (j.State == string(pipeline.JobCompleted) || j.State == string(pipeline.JobCompletedWithErrors)) &&
			j.Outcomes() == j.Accepted && j.Received == j.Accepted+j.Rejected
		switch {
		case j.State == string(pipeline.JobFailed):
			v.Abandoned++
		case finished:
			v.Unanswered++
		default:
			v.problem(&v.Jobs, "job %s, which no client got an answer for, is %s, neither failed nor finished: %+v", id, j.State, *j)
		}
	}
	// Deletes count applied without an audited write, each at most once.
	if applied < v.Writes || applied > v.Writes+deletes {
		v.problem(&v.Jobs, "the jobs count %d commands applied, the audit saw %d writes besides %d deletes", applied, v.Writes, deletes)
	}
}
