-- name: job_queue_depth
-- Jobs of each queue by status, for GET /metrics; procrastinate deletes
-- succeeded jobs (server/ingest/jobs.py), so those are rarely seen here.
SELECT queue_name AS queue, status::text AS status, count(*) AS jobs
FROM procrastinate_jobs
GROUP BY queue_name, status
ORDER BY queue_name, status;
