//! A shard run as a pg_auto_failover formation keeps every acknowledged commit and every
//! prepared transaction when its primary's machine is lost, takes the old primary back as
//! a standby, and rides out a postmaster crash without failing over. Stopped and started
//! again on its directories, as `orders dev --standbys` does from one run to the next, it
//! comes back settled and synchronous with every row, even when stopped during a failover.
//!
//! Needs pg_auto_failover: without it the test fails, saying what to install.
//! Run with `cargo test -p orders-dev --test auto_failover -- --nocapture` to see the times.

mod common;

use anyhow::{Context, ensure};
use common::{RunDir, connect, eventually, scalar};
use orders_dev::{FailoverMonitor, FailoverTimings, HaShard, free_port, port_is_open};
use sea_orm::{ConnectionTrait, DatabaseConnection};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const INSTALL: &str = "apt-get install pg-auto-failover-cli postgresql-15-auto-failover";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_fails_over_to_its_synchronous_standby_and_takes_the_old_primary_back()
-> anyhow::Result<()> {
    let run = RunDir::create("orders-dev-auto-failover", "failover")?;
    let timings = FailoverTimings::fast();
    eprintln!("failover timings: {timings}");

    let began = Instant::now();
    let monitor = FailoverMonitor::start(&run.path.join("monitor"), free_port()?, timings)
        .await
        .with_context(|| {
            format!("failed to start a pg_auto_failover monitor; is it installed? ({INSTALL})")
        })?;
    eprintln!("monitor ready in {:?}", began.elapsed());
    let ports = [free_port()?, free_port()?];
    let mut shard = HaShard::start(&monitor, "shard0", &run.path.join("shard0"), ports, true)
        .await
        .context("failed to start shard0 as a formation")?;
    let startup = shard.startup_times();
    eprintln!(
        "primary settled in {:?}; standby synchronous {:?} after that",
        startup.primary, startup.standby
    );
    assert_eq!(
        shard.url(),
        format!(
            "postgres://orders@127.0.0.1:{},127.0.0.1:{}/orders",
            ports[0], ports[1]
        )
    );

    // Commits on the primary wait for the standby.
    let old = shard.primary(&monitor).await?;
    let standby = 1 - old;
    let primary = connect(&shard.node(old).url()).await?;
    ensure_synchronous(&primary).await?;
    primary
        .execute_unprepared(
            "CREATE TABLE ledger (id int PRIMARY KEY); INSERT INTO ledger VALUES (1)",
        )
        .await?;
    let on_standby = connect(&shard.node(standby).url()).await?;
    eventually(
        Duration::from_secs(5),
        "the committed row on the standby",
        async || {
            let rows: i64 = scalar(&on_standby, "SELECT count(*) FROM ledger WHERE id = 1").await?;
            ensure!(rows == 1, "not there yet");
            Ok(())
        },
    )
    .await?;
    on_standby.close().await?;
    primary
        .execute_unprepared(
            "BEGIN; INSERT INTO ledger VALUES (2); PREPARE TRANSACTION 'before-failover'",
        )
        .await?;
    primary.close().await?;

    // Losing the primary's machine promotes the standby, with everything it acknowledged.
    let lost_at = Instant::now();
    shard.node_mut(old).lose();
    ensure!(
        !port_is_open(shard.node(old).port()) && !shard.node(old).is_running(),
        "the lost node still runs"
    );
    let new = shard
        .wait_for_primary_other_than(&monitor, old, Duration::from_secs(90))
        .await?;
    let promoted = lost_at.elapsed();
    ensure!(
        new == standby,
        "node{new} was promoted, not the standby node{standby}"
    );
    let promoted_db = eventually(
        Duration::from_secs(30),
        "a write on the promoted node",
        async || {
            let db = connect(&shard.node(new).url()).await?;
            let in_recovery: bool = scalar(&db, "SELECT pg_is_in_recovery()").await?;
            ensure!(!in_recovery, "still in recovery");
            db.execute_unprepared("INSERT INTO ledger VALUES (3)")
                .await?;
            Ok(db)
        },
    )
    .await?;
    let writable = lost_at.elapsed();
    eprintln!(
        "failover: node{new} promoted {promoted:?} and took a write {writable:?} after node{old} was lost"
    );
    let prepared: String = scalar(
        &promoted_db,
        "SELECT coalesce(string_agg(gid, ','), '') FROM pg_prepared_xacts",
    )
    .await?;
    ensure!(
        prepared == "before-failover",
        "prepared transactions on the new primary: {prepared:?}"
    );
    let committed: i64 = scalar(&promoted_db, "SELECT count(*) FROM ledger WHERE id = 1").await?;
    ensure!(
        committed == 1,
        "the committed row did not survive the failover"
    );
    promoted_db
        .execute_unprepared("COMMIT PREPARED 'before-failover'")
        .await?;
    let rows: i64 = scalar(&promoted_db, "SELECT count(*) FROM ledger").await?;
    ensure!(
        rows == 3,
        "{rows} rows after committing the prepared transaction"
    );

    // The old primary comes back as the new one's standby.
    let rejoined_at = Instant::now();
    shard.node_mut(old).rejoin()?;
    shard
        .wait_settled(&monitor, Duration::from_secs(90))
        .await?;
    eprintln!(
        "node{old} rejoined as secondary in {:?}",
        rejoined_at.elapsed()
    );
    ensure!(
        shard.primary(&monitor).await? == new,
        "the primary moved on rejoin"
    );
    let rejoined = connect(&shard.node(old).url()).await?;
    let in_recovery: bool = scalar(&rejoined, "SELECT pg_is_in_recovery()").await?;
    ensure!(in_recovery, "the rejoined node is not a standby");
    eventually(
        Duration::from_secs(5),
        "every row on the rejoined node",
        async || {
            let rows: i64 = scalar(&rejoined, "SELECT count(*) FROM ledger").await?;
            ensure!(rows == 3, "{rows} rows");
            Ok(())
        },
    )
    .await?;
    rejoined.close().await?;

    // A postmaster crash is not a failover: the keeper restarts it in place.
    promoted_db
        .execute_unprepared(
            "BEGIN; INSERT INTO ledger VALUES (4); PREPARE TRANSACTION 'before-crash'",
        )
        .await?;
    let started_before: String =
        scalar(&promoted_db, "SELECT pg_postmaster_start_time()::text").await?;
    promoted_db.close().await?;
    let crashed_at = Instant::now();
    shard.node(new).crash_postmaster()?;
    let restarted = eventually(
        Duration::from_secs(30),
        "the crashed primary to serve again",
        async || {
            let db = connect(&shard.node(new).url()).await?;
            let in_recovery: bool = scalar(&db, "SELECT pg_is_in_recovery()").await?;
            ensure!(!in_recovery, "in recovery");
            Ok(db)
        },
    )
    .await?;
    let serving = crashed_at.elapsed();
    let started_after: String =
        scalar(&restarted, "SELECT pg_postmaster_start_time()::text").await?;
    ensure!(
        started_after != started_before,
        "the postmaster was not restarted"
    );
    // The commit waits until the standby has reconnected to the restarted primary.
    restarted
        .execute_unprepared("COMMIT PREPARED 'before-crash'")
        .await?;
    let committing = crashed_at.elapsed();
    shard
        .wait_settled(&monitor, Duration::from_secs(30))
        .await?;
    ensure!(
        shard.primary(&monitor).await? == new,
        "the monitor failed over after a postmaster crash"
    );
    eprintln!(
        "postmaster crash: node{new} served again after {serving:?}, committed after {committing:?} (no failover)"
    );
    let rows: i64 = scalar(&restarted, "SELECT count(*) FROM ledger").await?;
    ensure!(rows == 4, "{rows} rows after the crash");
    restarted.close().await?;

    // Dropping the handles leaves nothing running.
    let node_ports = ports;
    let monitor_port = monitor.port();
    drop(shard);
    drop(monitor);
    for port in node_ports.into_iter().chain([monitor_port]) {
        ensure!(
            !port_is_open(port),
            "something still listens on port {port}"
        );
    }
    let left = processes_mentioning(&run.path);
    ensure!(left.is_empty(), "processes left behind: {left:?}");
    run.remove();
    Ok(())
}

/// How long the formation stays stopped before its second start: by then the restarted
/// monitor has health-checked nodes that are not running yet.
const PAUSE_BEFORE_RESTART: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_formation_started_again_on_its_directories_comes_back_settled_with_its_rows()
-> anyhow::Result<()> {
    let run = RunDir::create("orders-dev-auto-failover", "restart")?;
    let formation = Formation {
        dir: run.path.clone(),
        monitor_port: free_port()?,
        ports: [free_port()?, free_port()?],
    };
    let (monitor, shard) = formation.start().await?;
    let primary = connect(&shard.node(shard.primary(&monitor).await?).url()).await?;
    primary
        .execute_unprepared(
            "CREATE TABLE ledger (id int PRIMARY KEY); INSERT INTO ledger VALUES (1)",
        )
        .await?;
    primary.close().await?;
    let mut rows = 1;

    // As when `orders dev --standbys` is run again straight away.
    let stopped = stop_formation(shard, monitor);
    let (monitor, shard) = formation
        .start_again(&format!("at once after a {stopped:?} stop"), &mut rows)
        .await?;

    let stopped = stop_formation(shard, monitor);
    tokio::time::sleep(PAUSE_BEFORE_RESTART).await;
    let (monitor, mut shard) = formation
        .start_again(
            &format!("{PAUSE_BEFORE_RESTART:?} after a {stopped:?} stop"),
            &mut rows,
        )
        .await?;

    // Stopped halfway through a failover: the monitor keeps a formation with no primary.
    let lost = shard.primary(&monitor).await?;
    shard.node_mut(lost).lose();
    let promoting = eventually(
        Duration::from_secs(60),
        "the monitor to promote the standby",
        async || {
            let states = monitor.states(shard.formation()).await?;
            let promoting = states
                .iter()
                .find(|s| s.port == shard.node(1 - lost).port() && s.is_meant_to_be_primary());
            ensure!(promoting.is_some(), "not yet: {states:?}");
            Ok(states)
        },
    )
    .await?;
    let promoting: Vec<String> = promoting.iter().map(ToString::to_string).collect();
    eprintln!("stopping during a failover: {}", promoting.join("; "));
    let stopped = stop_formation(shard, monitor);
    let (monitor, shard) = formation
        .start_again(
            &format!("at once after a {stopped:?} stop during a failover"),
            &mut rows,
        )
        .await?;
    stop_formation(shard, monitor);

    for port in formation.ports.into_iter().chain([formation.monitor_port]) {
        ensure!(
            !port_is_open(port),
            "something still listens on port {port}"
        );
    }
    let left = processes_mentioning(&run.path);
    ensure!(left.is_empty(), "processes left behind: {left:?}");
    run.remove();
    Ok(())
}

/// A monitor and formation `shard0` on fixed directories and ports, as `orders dev
/// --standbys` runs them from one run to the next.
struct Formation {
    dir: PathBuf,
    monitor_port: u16,
    ports: [u16; 2],
}

impl Formation {
    /// Starts the monitor, then the shard: created on the first call, run again from their
    /// directories on later ones.
    async fn start(&self) -> anyhow::Result<(FailoverMonitor, HaShard)> {
        let monitor = FailoverMonitor::start(
            &self.dir.join("monitor"),
            self.monitor_port,
            FailoverTimings::fast(),
        )
        .await
        .with_context(|| {
            format!("failed to start a pg_auto_failover monitor; is it installed? ({INSTALL})")
        })?;
        let shard = HaShard::start(
            &monitor,
            "shard0",
            &self.dir.join("shard0"),
            self.ports,
            false,
        )
        .await
        .context("failed to start shard0 as a formation")?;
        Ok((monitor, shard))
    }

    /// Starts the stopped formation again (`when` says when, for the messages) and checks
    /// it came back settled, serving, with the `rows` rows written so far; writes one more.
    async fn start_again(
        &self,
        when: &str,
        rows: &mut i64,
    ) -> anyhow::Result<(FailoverMonitor, HaShard)> {
        let began = Instant::now();
        let (monitor, shard) = self
            .start()
            .await
            .with_context(|| format!("failed to start the formation again {when}"))?;
        let took = began.elapsed();
        let primary = ensure_settled(&monitor, &shard)
            .await
            .with_context(|| format!("started again {when}"))?;
        eprintln!(
            "started again {when}: settled in {took:?} (the shard in {:?}), node{primary} primary",
            shard.startup_times().standby
        );
        *rows += 1;
        ensure_serving(&shard, primary, *rows)
            .await
            .with_context(|| format!("the formation started again {when} does not serve"))?;
        Ok((monitor, shard))
    }
}

/// Stops the formation as `orders dev` does at Ctrl-C: the shard first, then its monitor.
/// Returns how long that took.
fn stop_formation(shard: HaShard, monitor: FailoverMonitor) -> Duration {
    let began = Instant::now();
    drop(shard);
    drop(monitor);
    began.elapsed()
}

/// Fails unless the monitor has one primary and one secondary, both as assigned; returns
/// the primary's index.
async fn ensure_settled(monitor: &FailoverMonitor, shard: &HaShard) -> anyhow::Result<usize> {
    let states = monitor.states(shard.formation()).await?;
    let settled_as = |role: &str| {
        states
            .iter()
            .filter(|s| s.is_settled() && s.reported == role)
            .count()
    };
    ensure!(
        states.len() == 2 && settled_as("primary") == 1 && settled_as("secondary") == 1,
        "the formation is not settled: {states:#?}"
    );
    Ok(shard.primary(monitor).await?)
}

/// Fails unless node `primary` replicates synchronously and takes a write, and both nodes
/// then hold `rows` rows (the earlier ones and this write).
async fn ensure_serving(shard: &HaShard, primary: usize, rows: i64) -> anyhow::Result<()> {
    let db = connect(&shard.node(primary).url()).await?;
    ensure_synchronous(&db).await?;
    // A commit that no standby acknowledges would wait for ever.
    tokio::time::timeout(
        Duration::from_secs(10),
        db.execute_unprepared(&format!("INSERT INTO ledger VALUES ({rows})")),
    )
    .await
    .context("a write on the primary waited 10 s for its standby")??;
    let on_primary: i64 = scalar(&db, "SELECT count(*) FROM ledger").await?;
    ensure!(
        on_primary == rows,
        "{on_primary} rows on the primary, not {rows}"
    );
    db.close().await?;
    let standby = connect(&shard.node(1 - primary).url()).await?;
    let in_recovery: bool = scalar(&standby, "SELECT pg_is_in_recovery()").await?;
    ensure!(
        in_recovery,
        "the secondary node{} is not a standby",
        1 - primary
    );
    eventually(
        Duration::from_secs(5),
        "every row on the standby",
        async || {
            let on_standby: i64 = scalar(&standby, "SELECT count(*) FROM ledger").await?;
            ensure!(
                on_standby == rows,
                "{on_standby} rows on the standby, not {rows}"
            );
            Ok(())
        },
    )
    .await?;
    standby.close().await?;
    Ok(())
}

/// Fails unless `primary` waits for a standby on each commit.
async fn ensure_synchronous(primary: &DatabaseConnection) -> anyhow::Result<()> {
    let standby_names: String = scalar(
        primary,
        "SELECT current_setting('synchronous_standby_names')",
    )
    .await?;
    let sync_states: String = scalar(
        primary,
        "SELECT coalesce(string_agg(sync_state, ','), '') FROM pg_stat_replication",
    )
    .await?;
    ensure!(
        !standby_names.is_empty() && ["sync", "quorum"].contains(&sync_states.as_str()),
        "replication is not synchronous: synchronous_standby_names = {standby_names:?}, \
         pg_stat_replication.sync_state = {sync_states:?}"
    );
    Ok(())
}

/// Command lines of processes that name `dir`: pg_autoctl and postmasters started on it.
fn processes_mentioning(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(&needle))
        .collect()
}
