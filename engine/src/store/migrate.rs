//! The SQL migrations in `migrations/` (refinery, `V<n>__<name>.sql`), embedded in the
//! binary. [`run`] applies those not yet applied; it is idempotent, and an advisory lock
//! makes engines that start together take turns instead of racing to create tables.

use anyhow::Context;

mod embedded {
    refinery::embed_migrations!("../migrations");
}

/// Arbitrary constant naming Switchyard's migration lock (`pg_advisory_lock` key).
const MIGRATION_LOCK: i64 = 0x5357_5954_4348_5944; // "SWYTCHYD"

/// What a run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// `V<n>__<name>` of each migration applied by this run (empty: already up to date).
    pub applied: Vec<String>,
    /// Highest version now applied.
    pub current: Option<u32>,
}

/// Applies pending migrations over `client`, holding the migration lock meanwhile.
pub async fn run(client: &mut tokio_postgres::Client) -> anyhow::Result<MigrationReport> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await
        .context("failed to take the migration lock")?;
    let result = embedded::migrations::runner().run_async(client).await;
    // Unlock even when the run failed; a dropped connection releases it anyway.
    let _ = client.execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK]).await;
    let report = result.context("failed to apply database migrations")?;
    let applied: Vec<String> = report
        .applied_migrations()
        .iter()
        .map(|m| format!("V{}__{}", m.version(), m.name()))
        .collect();
    let current = embedded::migrations::runner()
        .get_last_applied_migration_async(client)
        .await
        .context("failed to read the applied migrations")?
        .map(|m| m.version());
    Ok(MigrationReport { applied, current })
}

/// Versions embedded in this build (for `switchyard migrate` and tests).
pub fn embedded_versions() -> Vec<u32> {
    let mut versions: Vec<u32> =
        embedded::migrations::runner().get_migrations().iter().map(|m| m.version()).collect();
    versions.sort_unstable();
    versions
}

/// `switchyard migrate`: applies pending migrations to the configured database and says
/// what it did.
pub async fn command(config: &crate::config::Config) -> anyhow::Result<String> {
    let Some(database) = &config.database else {
        anyhow::bail!("database.url / DATABASE_URL: no database is configured; nothing to migrate");
    };
    let store = super::PgConversationStore::connect(database)?;
    let report = store.migrate().await?;
    let current = report.current.map_or_else(|| "none".to_owned(), |v| format!("V{v}"));
    Ok(if report.applied.is_empty() {
        format!("database is up to date (at {current})")
    } else {
        format!("applied {} (now at {current})", report.applied.join(", "))
    })
}
