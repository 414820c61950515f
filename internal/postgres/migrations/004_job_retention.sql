-- Finished jobs by when they finished, for pruning past jobs.retention.
CREATE INDEX spool_jobs_finished ON spool_jobs ((coalesce(completed_at, updated_at)))
    WHERE state IN ('completed', 'completed_with_errors', 'failed');
