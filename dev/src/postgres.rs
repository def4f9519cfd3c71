//! A local PostgreSQL cluster: `initdb` once, then one `postgres` postmaster on loopback.
//!
//! PostgreSQL refuses to run as root. When this process is root, the cluster's files belong
//! to, and its processes run as, an unprivileged OS user (`ORDERS_PG_OS_USER`, default
//! `postgres`). Authentication is `trust`, listening on 127.0.0.1 only: for development
//! and tests, never for production data.
//!
//! WAL archiving is a property of one start, not of the data directory:
//! [`PostgresCluster::start_archiving`] passes it on the postmaster's command line, so a
//! copy of the directory (a restore) archives only if it is started that way too, and never
//! pushes its WAL into the original's archive by accident.
//!
//! A data directory holding `recovery.signal` (a point-in-time restore) is started like any
//! other; [`PostgresCluster::start`] then returns once it has replayed to its target and
//! been promoted, not when it first accepts read-only connections.

use nix::sys::signal::Signal;
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::error::{DevError, Result, io, sql};
use super::process::{ChildService, log_output_to};
use super::{SUPERUSER, port_is_open, shard_url};

/// Where and how to run a cluster.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// The cluster's data directory (created and initialised if empty).
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// Turn off fsync and full-page writes: fast, and fine for clusters a test throws away.
    /// Checkpoints come at 128 MB of WAL instead of 1 GB, so a test run's clusters stay small.
    /// Commits still reach the kernel before they are acknowledged (`synchronous_commit`
    /// stays on), so a postmaster that crashes (`pg_ctl stop -m immediate`) loses nothing
    /// it acknowledged; only the machine crashing could.
    pub ephemeral: bool,
}

/// A running (or reused) local cluster.
#[derive(Debug)]
pub struct PostgresCluster {
    options: PostgresOptions,
    /// `None` when an already running postmaster on our data directory was reused.
    process: Option<ChildService>,
}

/// How a cluster hands its WAL to an archive (see [`PostgresCluster::start_archiving`]).
#[derive(Debug, Clone)]
pub struct WalArchive {
    /// PostgreSQL's `archive_command`: a shell command, `%p` standing for the segment's path.
    pub archive_command: String,
    /// Where the postmaster puts its Unix socket: archivers such as pgBackRest connect to the
    /// local cluster through it. Created for the cluster's OS user if missing. The socket's
    /// path (`<dir>/.s.PGSQL.<port>`) must fit the kernel's 107 bytes.
    pub socket_dir: PathBuf,
}

/// Longest Unix socket path the kernel accepts (`sun_path` less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// How long a restored cluster may take to replay its WAL to the recovery target.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(300);

/// The unprivileged account that owns clusters when we run as root.
#[derive(Debug, Clone)]
pub struct OsUser {
    /// Its login name (`ORDERS_PG_OS_USER`, default `postgres`).
    pub name: String,
    pub uid: u32,
    /// Its primary group, which the clusters' files get too.
    pub gid: u32,
}

/// The account clusters run as: `None` when we are not root (they run as us). Tools that
/// read or write a cluster's files (initdb, pgBackRest) run as it too, via
/// [`as_cluster_owner`].
pub fn os_user() -> Result<Option<OsUser>> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(None);
    }
    let name = std::env::var("ORDERS_PG_OS_USER").unwrap_or_else(|_| "postgres".to_owned());
    let user = nix::unistd::User::from_name(&name)
        .map_err(|source| DevError::Os {
            action: format!("look up the OS user {name:?}"),
            source,
        })?
        .ok_or_else(|| DevError::NoClusterOwner(name.clone()))?;
    Ok(Some(OsUser {
        name,
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
    }))
}

/// Path of a PostgreSQL server binary: `ORDERS_PG_BIN`, then `PATH`, then Debian's
/// `/usr/lib/postgresql/<newest>/bin`.
pub(crate) fn pg_binary(name: &str) -> Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("ORDERS_PG_BIN")
        .map(PathBuf::from)
        .into_iter()
        .collect();
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    let mut debian: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    debian.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.extend(debian.into_iter().rev());
    dirs.into_iter()
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .ok_or_else(|| DevError::NotInstalled {
            program: format!("PostgreSQL's `{name}`"),
            fix: "install PostgreSQL server binaries (Debian: apt-get install postgresql) or set ORDERS_PG_BIN",
        })
}

/// `command`, set to run as `owner` when there is one.
pub fn as_cluster_owner(mut command: Command, owner: &Option<OsUser>) -> Command {
    use std::os::unix::process::CommandExt;
    if let Some(user) = owner {
        command.uid(user.uid).gid(user.gid);
    }
    command
}

/// Gives `path` (not what is inside it) to `owner`, when there is one, so the cluster's
/// processes can write there.
pub fn give_to_cluster_owner(path: &Path, owner: &Option<OsUser>) -> Result<()> {
    if let Some(user) = owner {
        std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid)).map_err(io(format!(
            "give {} to OS user {:?}",
            path.display(),
            user.name
        )))?;
    }
    Ok(())
}

impl PostgresCluster {
    /// Initialises the data directory if needed and starts the postmaster, or reuses the one
    /// already serving this data directory. A directory that already holds a cluster (say a
    /// restored copy, on a port of its own) is started as it is; if it holds
    /// `recovery.signal`, this returns once recovery has reached its target and promoted.
    pub fn start(options: PostgresOptions) -> Result<Self> {
        Self::start_with(options, &[])
    }

    /// [`Self::start`], with every completed WAL segment handed to `archive`'s command and a
    /// Unix socket in its directory. Only this start archives: the settings go on the
    /// command line, not into the data directory.
    pub fn start_archiving(options: PostgresOptions, archive: &WalArchive) -> Result<Self> {
        let socket_dir = &archive.socket_dir;
        let socket = socket_dir.join(format!(".s.PGSQL.{}", options.port));
        let socket_len = socket.as_os_str().len();
        if socket_len > MAX_SOCKET_PATH {
            return Err(DevError::InvalidName(format!(
                "the Unix socket path {} is {socket_len} bytes, over the {MAX_SOCKET_PATH} the kernel allows: choose a shorter socket directory",
                socket.display()
            )));
        }
        if !socket_dir.exists() {
            fs::create_dir_all(socket_dir)
                .map_err(io(format!("create {}", socket_dir.display())))?;
            give_to_cluster_owner(socket_dir, &os_user()?)?;
        }
        let socket_dir = socket_dir.to_str().ok_or_else(|| {
            DevError::InvalidName(format!(
                "the socket directory {} is not valid UTF-8; choose another",
                socket_dir.display()
            ))
        })?;
        Self::start_with(
            options,
            &[
                ("wal_level", "replica"),
                ("archive_mode", "on"),
                ("archive_command", &archive.archive_command),
                ("unix_socket_directories", socket_dir),
            ],
        )
    }

    /// Starts the postmaster with `settings` as `-c name=value` on its command line.
    fn start_with(options: PostgresOptions, settings: &[(&str, &str)]) -> Result<Self> {
        let owner = os_user()?;
        let data_dir = &options.data_dir;
        if port_is_open(options.port) {
            if postmaster_port(data_dir) == Some(options.port) {
                tracing::info!(port = options.port, dir = %data_dir.display(), "reusing running PostgreSQL");
                return Ok(Self {
                    options,
                    process: None,
                });
            }
            return Err(DevError::PortTaken(options.port));
        }
        if !data_dir.join("PG_VERSION").exists() {
            init_cluster(data_dir, options.ephemeral, &owner)?;
        }
        // Removed by PostgreSQL when recovery ends: read it before the postmaster starts.
        let recovering = data_dir.join("recovery.signal").exists();
        let log_path = data_dir.with_extension("log");
        let mut command = as_cluster_owner(Command::new(pg_binary("postgres")?), &owner);
        command
            .arg("-D")
            .arg(data_dir)
            .arg("-p")
            .arg(options.port.to_string());
        for (name, value) in settings {
            command.arg("-c").arg(format!("{name}={value}"));
        }
        log_output_to(&mut command, &log_path)?;
        let port = options.port;
        let mut name = format!("PostgreSQL on port {port}");
        let mut timeout = Duration::from_secs(60);
        let psql = recovering.then(|| pg_binary("psql")).transpose()?;
        if recovering {
            tracing::info!(port, dir = %data_dir.display(), "starting a restored PostgreSQL: it replays WAL to its recovery target, then promotes");
            name.push_str(" (recovering to its target, then promoting)");
            timeout = RECOVERY_TIMEOUT;
        }
        let mut process = ChildService::spawn(&name, command, Signal::SIGINT)?;
        // Our postmaster saying it is ready on the port, not just an open port: another
        // program on it would look ready while our postmaster had failed to bind. A cluster
        // in recovery says "ready" as soon as it takes read-only connections, before its
        // recovery target: it is only done once it says it left recovery.
        process.wait_ready(timeout, &log_path, || {
            port_is_open(port)
                && postmaster_ready_on(data_dir, port)
                && psql
                    .as_deref()
                    .is_none_or(|psql| promoted(data_dir, psql, port))
        })?;
        Ok(Self {
            options,
            process: Some(process),
        })
    }

    /// A handle on `options`'s cluster that does not own a process: stopping it does nothing.
    pub fn detached(options: PostgresOptions) -> Self {
        Self {
            options,
            process: None,
        }
    }

    /// URL of `database` on this cluster.
    pub fn url(&self, database: &str) -> String {
        shard_url(self.options.port, database)
    }

    /// Creates `database` unless it exists. Retries while the server is still starting up.
    pub async fn create_database(&self, database: &str) -> Result<()> {
        if !database
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(DevError::InvalidName(format!(
                "database names are limited to [A-Za-z0-9_], got {database:?}"
            )));
        }
        let admin_url = self.url("postgres");
        let mut attempt = 0;
        let admin = loop {
            match Database::connect(&admin_url).await {
                Ok(conn) => break conn,
                Err(e) if attempt < 50 => {
                    attempt += 1;
                    tracing::debug!(error = %e, "PostgreSQL not accepting connections yet");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(sql(format!("connecting to {admin_url}"))(e)),
            }
        };
        let exists = admin
            .query_one_raw(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 FROM pg_database WHERE datname = $1",
                [database.into()],
            ))
            .await
            .map_err(sql(format!("looking for database {database}")))?
            .is_some();
        if !exists {
            // Identifiers cannot be bound as parameters; the name was checked above.
            admin
                .execute_unprepared(&format!("CREATE DATABASE \"{database}\""))
                .await
                .map_err(sql(format!("creating database {database}")))?;
        }
        admin
            .close()
            .await
            .map_err(sql("closing the admin connection"))?;
        Ok(())
    }

    /// The postmaster's process id, when we started it (its backends are its children).
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildService::pid)
    }

    /// Stops the postmaster if we started it (fast shutdown: active transactions roll back,
    /// prepared transactions survive).
    pub fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop(Duration::from_secs(30));
        }
    }

    /// Stops the postmaster at once, as `pg_ctl stop -m immediate` does (SIGQUIT): no
    /// checkpoint, every connection cut; the next start recovers from the WAL. What a
    /// crashed primary looks like to its clients.
    pub fn stop_immediately(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop_with(Signal::SIGQUIT, Duration::from_secs(30));
        }
    }
}

/// Starts the cluster in `data_dir` on `port` with `pg_ctl`, detached from this process: it
/// keeps running after we exit (`pg_ctl -D <data_dir> stop` stops it). For copies a command
/// hands over to its user, such as a restore. A restored copy (with `recovery.signal`)
/// returns once it has reached its recovery target and promoted. Never archives.
pub fn start_detached(data_dir: &Path, port: u16) -> Result<()> {
    let owner = os_user()?;
    // Inside the data directory: its parent may not be the cluster user's to write in.
    let log_path = data_dir.join("postmaster.log");
    let recovering = data_dir.join("recovery.signal").exists();
    let output = as_cluster_owner(Command::new(pg_binary("pg_ctl")?), &owner)
        .arg("start")
        .arg("-D")
        .arg(data_dir)
        .arg("-l")
        .arg(&log_path)
        .args(["-w", "-t", &RECOVERY_TIMEOUT.as_secs().to_string()])
        .arg("-o")
        // Loopback only, whatever the copied configuration says: a restored copy is not for
        // the live deployment's clients.
        .arg(format!(
            "-p {port} -c archive_mode=off -c listen_addresses=127.0.0.1"
        ))
        .output()
        .map_err(io("run pg_ctl start"))?;
    if !output.status.success() {
        return Err(DevError::CommandFailed {
            what: format!(
                "pg_ctl start of {} (its log: {})",
                data_dir.display(),
                log_path.display()
            ),
            output: format!("\n{}", String::from_utf8_lossy(&output.stderr)),
        });
    }
    if recovering {
        let psql = pg_binary("psql")?;
        let deadline = std::time::Instant::now() + RECOVERY_TIMEOUT;
        while !promoted(data_dir, &psql, port) {
            if std::time::Instant::now() > deadline {
                let _ = stop_detached(data_dir);
                return Err(DevError::CommandFailed {
                    what: format!("recovery of {}", data_dir.display()),
                    output: format!(
                        " did not reach its target within {:?}: see {}",
                        RECOVERY_TIMEOUT,
                        log_path.display()
                    ),
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Ok(())
}

/// Stops a cluster [`start_detached`] started (fast shutdown).
pub fn stop_detached(data_dir: &Path) -> Result<()> {
    let output = as_cluster_owner(Command::new(pg_binary("pg_ctl")?), &os_user()?)
        .arg("stop")
        .arg("-D")
        .arg(data_dir)
        .args(["-m", "fast", "-w"])
        .output()
        .map_err(io("run pg_ctl stop"))?;
    if !output.status.success() {
        return Err(DevError::CommandFailed {
            what: format!("pg_ctl stop of {}", data_dir.display()),
            output: format!("\n{}", String::from_utf8_lossy(&output.stderr)),
        });
    }
    Ok(())
}

/// Whether the postmaster of `data_dir` reports itself ready on `port` (its pid file's port
/// line and status line).
fn postmaster_ready_on(data_dir: &Path, port: u16) -> bool {
    let Ok(pid_file) = fs::read_to_string(data_dir.join("postmaster.pid")) else {
        return false;
    };
    let lines: Vec<&str> = pid_file.lines().collect();
    lines.get(3).and_then(|l| l.trim().parse().ok()) == Some(port)
        && lines.get(7).is_some_and(|status| status.trim() == "ready")
}

/// Whether the restored copy in `data_dir`, serving on `port`, has reached its recovery
/// target and promoted.
fn promoted(data_dir: &Path, psql: &Path, port: u16) -> bool {
    !data_dir.join("recovery.signal").exists() && left_recovery(psql, port)
}

/// Whether the server on `port` answers that it is no longer in recovery (promoted).
fn left_recovery(psql: &Path, port: u16) -> bool {
    Command::new(psql)
        .args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-h",
            "127.0.0.1",
            "-U",
            SUPERUSER,
            "-d",
            "postgres",
        ])
        .arg("-p")
        .arg(port.to_string())
        .args(["-c", "SELECT pg_is_in_recovery()"])
        .env("PGCONNECT_TIMEOUT", "2")
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.trim_ascii() == b"f")
}

/// The port recorded by the postmaster running on `data_dir` (line 4 of `postmaster.pid`),
/// so a stale pid file next to someone else's server on the port is not mistaken for ours.
fn postmaster_port(data_dir: &Path) -> Option<u16> {
    let pid_file = fs::read_to_string(data_dir.join("postmaster.pid")).ok()?;
    pid_file.lines().nth(3)?.trim().parse().ok()
}

fn init_cluster(data_dir: &Path, ephemeral: bool, owner: &Option<OsUser>) -> Result<()> {
    initdb(data_dir, owner, Some(SUPERUSER))?;
    append_to_postgresql_conf(data_dir, &cluster_settings(ephemeral, ""))
}

/// Creates `data_dir` for `owner` and runs `initdb` there with trust authentication. The
/// superuser is `superuser`, or initdb's default (the OS user's name) when `None`.
pub(crate) fn initdb(
    data_dir: &Path,
    owner: &Option<OsUser>,
    superuser: Option<&str>,
) -> Result<()> {
    fs::create_dir_all(data_dir).map_err(io(format!("create {}", data_dir.display())))?;
    give_to_cluster_owner(data_dir, owner)?;
    tracing::info!(dir = %data_dir.display(), "initialising PostgreSQL cluster");
    let mut command = as_cluster_owner(Command::new(pg_binary("initdb")?), owner);
    command.arg("-D").arg(data_dir);
    if let Some(superuser) = superuser {
        command.args(["-U", superuser]);
    }
    let output = command
        .args([
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-instructions",
        ])
        .output()
        .map_err(io("run initdb"))?;
    if !output.status.success() {
        let hint = owner
            .as_ref()
            .map(|u| format!(" (the cluster runs as OS user {:?}: every parent directory of {} must be reachable by it)", u.name, data_dir.display()))
            .unwrap_or_default();
        return Err(DevError::CommandFailed {
            what: format!("initdb{hint}"),
            output: format!("\n{}", String::from_utf8_lossy(&output.stderr)),
        });
    }
    Ok(())
}

/// The `postgresql.conf` lines every local cluster gets: loopback only, Unix sockets in
/// `unix_socket_directories` (`""`: none), room for two-phase commit, and in `ephemeral`
/// mode no fsync and a small WAL (see [`PostgresOptions::ephemeral`]).
pub(crate) fn cluster_settings(ephemeral: bool, unix_socket_directories: &str) -> String {
    let sockets = if unix_socket_directories.is_empty() {
        "no Unix socket".to_owned()
    } else {
        format!("Unix sockets in {unix_socket_directories}")
    };
    let mut settings = format!(
        "\n# Added by orders: loopback only, {sockets}, two-phase commit enabled.\n\
         listen_addresses = '127.0.0.1'\n\
         unix_socket_directories = '{unix_socket_directories}'\n\
         max_connections = 200\n\
         max_prepared_transactions = 64\n",
    );
    if ephemeral {
        settings.push_str(
            "fsync = off\nfull_page_writes = off\nmax_wal_size = '128MB'\nmin_wal_size = '32MB'\n",
        );
    }
    settings
}

/// Appends `settings` to `data_dir`'s `postgresql.conf` (later lines win).
pub(crate) fn append_to_postgresql_conf(data_dir: &Path, settings: &str) -> Result<()> {
    let conf = data_dir.join("postgresql.conf");
    let mut text = fs::read_to_string(&conf).map_err(io(format!("read {}", conf.display())))?;
    text.push_str(settings);
    fs::write(&conf, text).map_err(io(format!("write {}", conf.display())))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_archiving_start_refuses_a_socket_path_the_kernel_would_reject() {
        let socket_dir = PathBuf::from(format!("/tmp/{}", "s".repeat(90)));
        let error = PostgresCluster::start_archiving(
            PostgresOptions {
                data_dir: PathBuf::from("/nonexistent/orders-test"),
                port: 55432,
                ephemeral: true,
            },
            &WalArchive {
                archive_command: "true".to_owned(),
                socket_dir: socket_dir.clone(),
            },
        )
        .unwrap_err();
        assert!(
            error
                .to_string()
                .contains("choose a shorter socket directory"),
            "{error}"
        );
        assert!(!socket_dir.exists());
    }
}
