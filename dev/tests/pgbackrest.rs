//! A shard whose WAL pgBackRest archives can be restored to a named restore point, into a
//! directory of its own, and started there on another port: it holds what was committed
//! before the point, not what came after, and a transaction prepared before the point and
//! committed after it comes back prepared, for a coordinator to decide.
//!
//! Needs pgBackRest: without it the test fails, saying what to install.
//! Run with `cargo test -p orders-dev --test pgbackrest -- --nocapture` to see the times.

mod common;

use anyhow::{Context, ensure};
use common::{RunDir, connect, eventually, scalar};
use orders_backup::pgbackrest::{
    BackupKind, LocalShard, Lsn, PgBackRestError, Repository, WalSegment,
};
use orders_dev::{PostgresCluster, PostgresOptions, free_port};
use sea_orm::ConnectionTrait;
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install pgbackrest";
const DATABASE: &str = "orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_restored_to_a_named_point_holds_what_came_before_it_and_its_prepared_transaction()
-> anyhow::Result<()> {
    let run = RunDir::create("orders-dev-pgbackrest", "restore-point")?;
    let shard = LocalShard {
        data_dir: run.path.join("shard0"),
        port: free_port()?,
        socket_dir: run.path.join("sockets"),
    };
    let repository =
        Repository::write_local(&run.path.join("backups"), std::slice::from_ref(&shard))
            .with_context(|| {
                format!("failed to write a pgBackRest repository; is it installed? ({INSTALL})")
            })?;
    let archive = repository.wal_archive(0)?;
    let mut original = start(
        PostgresOptions {
            data_dir: shard.data_dir.clone(),
            port: shard.port,
            ephemeral: true,
        },
        Some(archive),
    )
    .await?;
    original.create_database(DATABASE).await?;

    let too_early = repository.backup(0, BackupKind::Full).await;
    let Err(
        error @ PgBackRestError::Failed {
            exit_code: Some(55),
            shard: Some(0),
            ..
        },
    ) = &too_early
    else {
        anyhow::bail!("a backup before stanza-create should fail with code 55: {too_early:?}");
    };
    eprintln!("before stanza-create: {error}");

    let began = Instant::now();
    repository.create_stanza(0).await?;
    repository
        .create_stanza(0)
        .await
        .context("creating the stanza again should change nothing")?;
    repository.check(0).await?;
    eprintln!("stanza created and checked in {:?}", began.elapsed());
    let began = Instant::now();
    let full = repository.backup(0, BackupKind::Full).await?;
    eprintln!("full backup {full} in {:?}", began.elapsed());

    // Row 1 before the point; row 3 prepared before it and committed after; row 2 after.
    let db = connect(&original.url(DATABASE)).await?;
    db.execute_unprepared(
        "CREATE TABLE ledger (id int PRIMARY KEY); INSERT INTO ledger VALUES (1)",
    )
    .await?;
    db.execute_unprepared("BEGIN; INSERT INTO ledger VALUES (3); PREPARE TRANSACTION 'row-3'")
        .await?;
    let point: Lsn = scalar::<String>(&db, "SELECT pg_create_restore_point('p1')::text")
        .await?
        .parse()?;
    let timeline: i32 = scalar(&db, "SELECT timeline_id FROM pg_control_checkpoint()").await?;
    let point_segment = WalSegment::holding(point, timeline as u32);
    let named_by_postgres: String =
        scalar(&db, &format!("SELECT pg_walfile_name('{point}')")).await?;
    ensure!(
        point_segment.to_string() == named_by_postgres,
        "the point {point} is in {named_by_postgres} by PostgreSQL, {point_segment} by us"
    );
    db.execute_unprepared("INSERT INTO ledger VALUES (2)")
        .await?;
    db.execute_unprepared("COMMIT PREPARED 'row-3'").await?;
    db.execute_unprepared("SELECT pg_switch_wal()").await?;
    db.close().await?;

    let began = Instant::now();
    let stanza = eventually(
        Duration::from_secs(60),
        "the point's segment in the archive",
        async || {
            let stanza = repository.stanza_info(0).await?;
            let archived = stanza.archive.map(|archive| archive.max);
            ensure!(
                archived >= Some(point_segment),
                "archived up to {archived:?}, the point is in {point_segment}"
            );
            Ok(stanza)
        },
    )
    .await?;
    eprintln!(
        "the point's segment {point_segment} archived {:?} after the switch",
        began.elapsed()
    );
    ensure!(stanza.status.is_ok(), "stanza status: {:?}", stanza.status);
    ensure!(
        stanza
            .backup_reaching(point, timeline as u32)
            .map(|b| &b.label)
            == Some(&full),
        "the full backup {full} should reach {point}: {:?}",
        stanza.backups
    );

    let over_own = repository.restore(0, "p1", &shard.data_dir).await;
    ensure!(
        matches!(over_own, Err(PgBackRestError::RestoreOverOwnData { .. })),
        "a restore over the shard's own data directory was not refused: {over_own:?}"
    );
    let into_non_empty = repository.restore(0, "p1", &run.path.join("backups")).await;
    ensure!(
        matches!(
            into_non_empty,
            Err(PgBackRestError::RestoreTargetNotEmpty { .. })
        ),
        "a restore into a directory holding files was not refused: {into_non_empty:?}"
    );
    let restored_dir = run.path.join("restored");
    let began = Instant::now();
    repository.restore(0, "p1", &restored_dir).await?;
    let restored_in = began.elapsed();
    let began = Instant::now();
    let mut restored = start(
        PostgresOptions {
            data_dir: restored_dir,
            port: free_port()?,
            ephemeral: true,
        },
        None,
    )
    .await?;
    eprintln!(
        "restored to p1 in {restored_in:?}; replayed and promoted in {:?}",
        began.elapsed()
    );

    let db = connect(&restored.url(DATABASE)).await?;
    let in_recovery: bool = scalar(&db, "SELECT pg_is_in_recovery()").await?;
    ensure!(!in_recovery, "the restored cluster is still in recovery");
    let rows: String = scalar(
        &db,
        "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM ledger",
    )
    .await?;
    ensure!(
        rows == "1",
        "rows in the restored cluster: {rows:?}, not \"1\""
    );
    let prepared: String = scalar(
        &db,
        "SELECT coalesce(string_agg(gid, ','), '') FROM pg_prepared_xacts",
    )
    .await?;
    ensure!(
        prepared == "row-3",
        "prepared transactions in the restored cluster: {prepared:?}"
    );
    let archive_mode: String = scalar(&db, "SELECT current_setting('archive_mode')").await?;
    ensure!(
        archive_mode == "off",
        "the restored copy archives (archive_mode = {archive_mode}); it must not unless started so"
    );
    db.execute_unprepared("COMMIT PREPARED 'row-3'").await?;
    db.execute_unprepared("INSERT INTO ledger VALUES (4)")
        .await
        .context("the restored cluster does not take writes")?;
    db.close().await?;
    restored.stop();

    let began = Instant::now();
    let incremental = repository.backup(0, BackupKind::Incremental).await?;
    eprintln!("incremental backup {incremental} in {:?}", began.elapsed());
    let stanza = repository.stanza_info(0).await?;
    let listed = stanza
        .backups
        .iter()
        .find(|backup| backup.label == incremental)
        .context("the incremental backup is not listed")?;
    ensure!(
        listed.kind == BackupKind::Incremental && listed.prior.as_ref() == Some(&full),
        "the incremental backup is listed as {:?} after {:?}",
        listed.kind,
        listed.prior
    );
    ensure!(
        listed.stop_lsn > point,
        "the incremental backup stopped at {} (before the point {point})",
        listed.stop_lsn
    );

    original.stop();
    run.remove();
    Ok(())
}

/// Starts a cluster off the async runtime's threads (the start waits, blocking).
async fn start(
    options: PostgresOptions,
    archive: Option<orders_dev::WalArchive>,
) -> anyhow::Result<PostgresCluster> {
    let dir = options.data_dir.clone();
    let cluster = tokio::task::spawn_blocking(move || match archive {
        Some(archive) => PostgresCluster::start_archiving(options, &archive),
        None => PostgresCluster::start(options),
    })
    .await?
    .with_context(|| format!("failed to start the cluster in {}", dir.display()))?;
    Ok(cluster)
}
