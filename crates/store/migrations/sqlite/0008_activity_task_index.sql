-- `GET /v1/workspaces/{id}/activity?task_id=` reads one task's events in (timestamp, id) order; without this index
-- it would scan every event of the workspace. Only rows that name a task are indexed.

CREATE INDEX audit_events_task_ts_idx ON audit_events (task_id, "timestamp", id) WHERE task_id IS NOT NULL;
