//! The two migration ladders, embedded at compile time. (`sqlx::migrate!` needs sqlx's `macros` feature, which the
//! workspace does not enable; this builds the same `Migrator`, with the same checksums, from `include_str!`.)
//! A new migration is a new file in `migrations/<backend>/` plus its line below; a test keeps the two in step.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

/// `(version, description, sql)` per step, oldest first.
type Ladder = &'static [(i64, &'static str, &'static str)];

pub(crate) const SQLITE: Ladder = &[
    (1, "initial", include_str!("../migrations/sqlite/0001_initial.sql")),
    (2, "login_throttle", include_str!("../migrations/sqlite/0002_login_throttle.sql")),
    (3, "idempotency_leases", include_str!("../migrations/sqlite/0003_idempotency_leases.sql")),
    (4, "secrets_credentials", include_str!("../migrations/sqlite/0004_secrets_credentials.sql")),
    (5, "egress", include_str!("../migrations/sqlite/0005_egress.sql")),
    (6, "intent_observation_fence", include_str!("../migrations/sqlite/0006_intent_observation_fence.sql")),
    (7, "tasks", include_str!("../migrations/sqlite/0007_tasks.sql")),
    (8, "activity_task_index", include_str!("../migrations/sqlite/0008_activity_task_index.sql")),
    (9, "role_pod_limits", include_str!("../migrations/sqlite/0009_role_pod_limits.sql")),
    (10, "idle", include_str!("../migrations/sqlite/0010_idle.sql")),
    (11, "checkpoints", include_str!("../migrations/sqlite/0011_checkpoints.sql")),
    (12, "task_budgets", include_str!("../migrations/sqlite/0012_task_budgets.sql")),
];

pub(crate) const POSTGRES: Ladder = &[
    (1, "initial", include_str!("../migrations/postgres/0001_initial.sql")),
    (2, "login_throttle", include_str!("../migrations/postgres/0002_login_throttle.sql")),
    (3, "idempotency_leases", include_str!("../migrations/postgres/0003_idempotency_leases.sql")),
    (4, "secrets_credentials", include_str!("../migrations/postgres/0004_secrets_credentials.sql")),
    (5, "egress", include_str!("../migrations/postgres/0005_egress.sql")),
    (6, "intent_observation_fence", include_str!("../migrations/postgres/0006_intent_observation_fence.sql")),
    (7, "tasks", include_str!("../migrations/postgres/0007_tasks.sql")),
    (8, "activity_task_index", include_str!("../migrations/postgres/0008_activity_task_index.sql")),
    (9, "role_pod_limits", include_str!("../migrations/postgres/0009_role_pod_limits.sql")),
    (10, "idle", include_str!("../migrations/postgres/0010_idle.sql")),
    (11, "checkpoints", include_str!("../migrations/postgres/0011_checkpoints.sql")),
    (12, "task_budgets", include_str!("../migrations/postgres/0012_task_budgets.sql")),
];

pub(crate) fn migrator(ladder: Ladder) -> Migrator {
    Migrator::with_migrations(
        ladder
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(version, Cow::Borrowed(description), MigrationType::Simple, sql.into_sql_str(), false)
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file on disk is embedded, under the version and description its name gives.
    fn check(dir: &str, ladder: Ladder) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(dir);
        let mut files: Vec<String> = std::fs::read_dir(&path)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        let embedded: Vec<String> = ladder.iter().map(|(v, d, _)| format!("{v:04}_{d}.sql")).collect();
        assert_eq!(files, embedded, "migrations/{dir} and migrations.rs disagree");
        for (name, (_, _, sql)) in files.iter().zip(ladder.iter()) {
            assert_eq!(std::fs::read_to_string(path.join(name)).unwrap(), *sql);
        }
    }

    #[test]
    fn every_migration_file_is_embedded() {
        check("sqlite", SQLITE);
        check("postgres", POSTGRES);
    }
}
