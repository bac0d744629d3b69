-- A role's overrides of the server's per-pod resource limits (`runtime.limits.*`): memory bytes, processes, CPU
-- quota in thousandths of a CPU. NULL: the server's default.
ALTER TABLE agent_roles ADD COLUMN memory_limit_bytes BIGINT;
ALTER TABLE agent_roles ADD COLUMN pids_limit BIGINT;
ALTER TABLE agent_roles ADD COLUMN cpu_limit_millis BIGINT;
