//! pgBackRest, run for a deployment's shards: one repository (one config file), one stanza
//! per shard named `shard-<index>`, each shard's WAL pushed to it by its `archive_command`.
//!
//! Every command runs with `--config` (nothing under /etc/pgbackrest matters) and, when we
//! are root, as the clusters' OS user: pgBackRest reads the data directories and the
//! archiver writes the repository as that user, so the repository's files must be its own.
//! A failed command is reported with the command, the shard, pgBackRest's exit code and the
//! tail of its stderr, plus what to do next where that is clear.
//!
//! Restores stop at a named restore point and go to a new, empty directory, never to the
//! stanza's own data directory: the shard keeps running while its past is examined. A
//! restored copy archives nothing unless it is started with
//! `PostgresCluster::start_archiving` (given [`Repository::wal_archive`]).

use chrono::{DateTime, Utc};
use orders_dev::{OsUser, WalArchive, as_cluster_owner, give_to_cluster_owner, os_user};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

pub use config::LocalShard;
pub use error::PgBackRestError;
pub use info::{BackupInfo, StanzaInfo, StanzaStatus, WalRange};
pub use wal::{Lsn, WalSegment, can_reach};

/// What this module's functions return.
pub type Result<T, E = PgBackRestError> = std::result::Result<T, E>;

/// How many full backups a repository written by [`Repository::write_local`] keeps (with
/// the incrementals and WAL that depend on them): older ones are expired after each backup.
pub const RETAINED_FULL_BACKUPS: u32 = 4;

/// Lines of pgBackRest's stderr kept in an error: its `ERROR:` line and the hints after it.
const STDERR_TAIL_LINES: usize = 12;

/// What a backup copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupKind {
    /// Every file of the cluster: restorable on its own.
    Full,
    /// What changed since the last backup of any kind: small, but restoring it needs the
    /// chain back to a full backup.
    Incremental,
    /// What changed since the last full backup: restoring it needs that full backup only.
    Differential,
}

impl BackupKind {
    /// pgBackRest's name for it (`--type=`, and `type` in `info`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Incremental => "incr",
            Self::Differential => "diff",
        }
    }

    fn from_pgbackrest(name: &str) -> Option<Self> {
        [Self::Full, Self::Incremental, Self::Differential]
            .into_iter()
            .find(|kind| kind.as_str() == name)
    }
}

/// A backup's name in the repository, as pgBackRest made it (`20240101-120000F`, an
/// incremental's `20240101-120000F_20240101-130000I`); what `--set` takes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BackupLabel(String);

impl BackupLabel {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for BackupLabel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for BackupLabel {
    type Err = PgBackRestError;

    fn from_str(label: &str) -> Result<Self> {
        let plausible = !label.is_empty()
            && label
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if plausible {
            Ok(Self(label.to_owned()))
        } else {
            Err(PgBackRestError::Invalid(format!(
                "{label:?} is not a pgBackRest backup label (like 20240101-120000F); list them with Repository::info"
            )))
        }
    }
}

/// The stanza of shard `shard`.
pub fn stanza_name(shard: usize) -> String {
    format!("shard-{shard}")
}

/// One pgBackRest configuration file and the repository it describes.
#[derive(Debug, Clone)]
pub struct Repository {
    config: PathBuf,
    settings: config::Settings,
    /// The `pgbackrest` executable, found once so that the archive command names it by path.
    binary: PathBuf,
    /// Who runs the commands: the clusters' OS user when we are root.
    owner: Option<OsUser>,
}

impl Repository {
    /// The repository described by the config file `config`.
    pub fn open(config: PathBuf) -> Result<Self> {
        let config = std::path::absolute(&config).map_err(error::io(format!(
            "resolve the config path {}",
            config.display()
        )))?;
        let text = std::fs::read_to_string(&config)
            .map_err(error::io(format!("read {}", config.display())))?;
        Ok(Self {
            settings: config::Settings::parse(&text),
            config,
            binary: find_pgbackrest()?,
            owner: os_user()?,
        })
    }

    /// Writes `dir/pgbackrest.conf` for a repository under `dir` (`repo`, `log`, `lock`,
    /// `spool`) holding a stanza per shard of `shards`, in order, and opens it; an earlier
    /// config there is replaced, the repository kept. The directories belong to the
    /// clusters' OS user, which must be able to reach `dir`.
    pub fn write_local(dir: &Path, shards: &[LocalShard]) -> Result<Self> {
        let dir =
            std::path::absolute(dir).map_err(error::io(format!("resolve {}", dir.display())))?;
        let owner = os_user()?;
        std::fs::create_dir_all(&dir).map_err(error::io(format!("create {}", dir.display())))?;
        for sub in config::LOCAL_DIRS {
            let path = dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(error::io(format!("create {}", path.display())))?;
            give_to_cluster_owner(&path, &owner)?;
        }
        let path = dir.join("pgbackrest.conf");
        std::fs::write(&path, config::local(&dir, shards)?)
            .map_err(error::io(format!("write {}", path.display())))?;
        give_to_cluster_owner(&path, &owner)?;
        tracing::info!(config = %path.display(), shards = shards.len(), "wrote pgBackRest repository config");
        Self::open(path)
    }

    /// The config file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// The `archive_command` that pushes shard `shard`'s WAL into this repository.
    pub fn archive_command(&self, shard: usize) -> String {
        // PostgreSQL replaces `%p` and runs the result with `sh`; a `%` of ours must be `%%`.
        let word = |text: &str| shell_word(text).replace('%', "%%");
        format!(
            "{} {} --stanza={} archive-push %p",
            word(&self.binary.to_string_lossy()),
            word(&format!("--config={}", self.config.display())),
            stanza_name(shard),
        )
    }

    /// How to start shard `shard`'s cluster so that it archives here
    /// (`PostgresCluster::start_archiving`): its archive command, and the socket directory
    /// this repository's commands connect through.
    pub fn wal_archive(&self, shard: usize) -> Result<WalArchive> {
        Ok(WalArchive {
            archive_command: self.archive_command(shard),
            socket_dir: PathBuf::from(self.stanza_setting(shard, "pg1-socket-path")?),
        })
    }

    /// Creates shard `shard`'s stanza in the repository. Running it again on a stanza that
    /// matches its cluster succeeds and changes nothing.
    #[tracing::instrument(skip_all, fields(shard = shard))]
    pub async fn create_stanza(&self, shard: usize) -> Result<()> {
        self.run_for(shard, "stanza-create", &[]).await.map(drop)
    }

    /// Checks that shard `shard`'s cluster archives into the repository: it switches to a new
    /// WAL segment and waits until that arrives.
    #[tracing::instrument(skip_all, fields(shard = shard))]
    pub async fn check(&self, shard: usize) -> Result<()> {
        self.run_for(shard, "check", &[]).await.map(drop)
    }

    /// Backs up shard `shard`'s running cluster and returns the new backup's label. An
    /// incremental backup with no full backup before it becomes a full one.
    #[tracing::instrument(skip_all, fields(shard = shard, kind = kind.as_str()))]
    pub async fn backup(&self, shard: usize, kind: BackupKind) -> Result<BackupLabel> {
        self.run_for(shard, "backup", &[format!("--type={}", kind.as_str())])
            .await?;
        // pgBackRest holds the stanza's lock for the whole backup, so the newest backup
        // listed now is the one just made.
        let stanza = self.stanza_info(shard).await?;
        let backup = stanza
            .backups
            .last()
            .ok_or_else(|| PgBackRestError::NoBackupListed {
                shard,
                config: self.config.clone(),
            })?;
        tracing::info!(label = %backup.label, stop_lsn = %backup.stop_lsn, "backup done");
        Ok(backup.label.clone())
    }

    /// Every stanza of the repository, with its backups and archived WAL.
    #[tracing::instrument(skip_all)]
    pub async fn info(&self) -> Result<Vec<StanzaInfo>> {
        let output = self
            .run(None, "info", &["--output=json".to_owned()])
            .await?;
        info::parse(&output)
    }

    /// Shard `shard`'s stanza, with its backups and archived WAL.
    #[tracing::instrument(skip_all, fields(shard = shard))]
    pub async fn stanza_info(&self, shard: usize) -> Result<StanzaInfo> {
        let output = self
            .run_for(shard, "info", &["--output=json".to_owned()])
            .await?;
        info::parse(&output)?
            .into_iter()
            .find(|stanza| stanza.name == stanza_name(shard))
            .ok_or_else(|| PgBackRestError::UnknownShard {
                shard,
                config: self.config.clone(),
            })
    }

    /// Restores shard `shard` from its latest backup into `into`, a new or empty directory,
    /// set up to replay WAL up to the restore point `point` and then promote. Start it
    /// with `PostgresCluster::start` on a port of its own; it comes up promoted.
    #[tracing::instrument(skip_all, fields(shard = shard, point = point))]
    pub async fn restore(&self, shard: usize, point: &str, into: &Path) -> Result<()> {
        self.restore_with(shard, None, point, into).await
    }

    /// [`Self::restore`] from the backup `backup` (one that [`can_reach`] `point`).
    #[tracing::instrument(skip_all, fields(shard = shard, point = point, backup = backup.as_str()))]
    pub async fn restore_from(
        &self,
        shard: usize,
        backup: &BackupLabel,
        point: &str,
        into: &Path,
    ) -> Result<()> {
        self.restore_with(shard, Some(backup), point, into).await
    }

    async fn restore_with(
        &self,
        shard: usize,
        backup: Option<&BackupLabel>,
        point: &str,
        into: &Path,
    ) -> Result<()> {
        if point.is_empty() || point.chars().any(|c| c == '\'' || c.is_control()) {
            return Err(PgBackRestError::Invalid(format!(
                "{point:?} cannot be a restore point name: use the name given to pg_create_restore_point, without quotes or control characters"
            )));
        }
        let into = self.prepare_restore_dir(shard, into)?;
        let mut args = vec![
            format!("--pg1-path={}", into.display()),
            "--type=name".to_owned(),
            format!("--target={point}"),
            "--target-action=promote".to_owned(),
        ];
        if let Some(backup) = backup {
            args.push(format!("--set={backup}"));
        }
        self.run_for(shard, "restore", &args).await.map(drop)
    }

    /// Refuses the stanza's own data directory (or one inside or around it) and non-empty
    /// directories; creates `into` for the clusters' OS user, mode 0700 as PostgreSQL wants.
    fn prepare_restore_dir(&self, shard: usize, into: &Path) -> Result<PathBuf> {
        let into = canonical_as_far_as_exists(into)?;
        let own = canonical_as_far_as_exists(Path::new(self.stanza_setting(shard, "pg1-path")?))?;
        if into.starts_with(&own) || own.starts_with(&into) {
            return Err(PgBackRestError::RestoreOverOwnData { shard, path: into });
        }
        if into.exists() {
            let mut entries =
                std::fs::read_dir(&into).map_err(error::io(format!("list {}", into.display())))?;
            if entries.next().is_some() {
                return Err(PgBackRestError::RestoreTargetNotEmpty { path: into });
            }
        }
        std::fs::create_dir_all(&into).map_err(error::io(format!("create {}", into.display())))?;
        give_to_cluster_owner(&into, &self.owner)?;
        std::fs::set_permissions(&into, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .map_err(error::io(format!(
                "restrict {} to its owner",
                into.display()
            )))?;
        Ok(into)
    }

    /// A setting of shard `shard`'s stanza, which must be in the config.
    fn stanza_setting(&self, shard: usize, key: &str) -> Result<&str> {
        let stanza = stanza_name(shard);
        if !self.settings.has_section(&stanza) {
            return Err(PgBackRestError::UnknownShard {
                shard,
                config: self.config.clone(),
            });
        }
        self.settings
            .get(&stanza, key)
            .ok_or_else(|| PgBackRestError::MissingSetting {
                stanza,
                key: key.to_owned(),
                config: self.config.clone(),
            })
    }

    /// Runs `command` for shard `shard`'s stanza, which must be in the config.
    async fn run_for(&self, shard: usize, command: &str, args: &[String]) -> Result<Vec<u8>> {
        self.stanza_setting(shard, "pg1-path")?;
        self.run(Some(shard), command, args).await
    }

    /// Runs `pgbackrest --config=… [--stanza=…] ARGS COMMAND` as the clusters' OS user and
    /// returns its stdout.
    async fn run(&self, shard: Option<usize>, command: &str, args: &[String]) -> Result<Vec<u8>> {
        let mut line = std::process::Command::new(&self.binary);
        line.arg(format!("--config={}", self.config.display()));
        if let Some(shard) = shard {
            line.arg(format!("--stanza={}", stanza_name(shard)));
        }
        line.args(args).arg(command).current_dir("/");
        let mut line = tokio::process::Command::from(as_cluster_owner(line, &self.owner));
        line.stdin(Stdio::null()).kill_on_drop(true);
        tracing::debug!(command, ?args, "running pgbackrest");
        let began = Instant::now();
        let output = line.output().await.map_err(|source| PgBackRestError::Run {
            command: command.to_owned(),
            source,
        })?;
        if !output.status.success() {
            let stderr = String::from_utf8_lossy(&output.stderr);
            let stderr = if stderr.trim().is_empty() {
                String::from_utf8_lossy(&output.stdout)
            } else {
                stderr
            };
            return Err(PgBackRestError::failed(
                command,
                shard,
                output.status.code(),
                &stderr,
            ));
        }
        tracing::info!(
            command,
            elapsed_ms = began.elapsed().as_millis() as u64,
            "pgbackrest done"
        );
        Ok(output.stdout)
    }
}

/// `path` made absolute, with symbolic links resolved in the part of it that exists.
fn canonical_as_far_as_exists(path: &Path) -> Result<PathBuf> {
    let absolute =
        std::path::absolute(path).map_err(error::io(format!("resolve {}", path.display())))?;
    let mut existing = absolute.as_path();
    let mut missing = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            return Ok(missing
                .into_iter()
                .rev()
                .fold(canonical, |path, part| path.join(part)));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                missing.push(name.to_owned());
                existing = parent;
            }
            _ => return Ok(absolute),
        }
    }
}

/// The `pgbackrest` executable on `PATH`.
fn find_pgbackrest() -> Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("pgbackrest"))
        .find(|path| path.is_file())
        .ok_or(PgBackRestError::NotInstalled)
}

/// `word` as one `sh` word: quoted when it holds anything but plain path characters.
fn shell_word(word: &str) -> String {
    let plain = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=+,:@%".contains(c));
    if plain {
        word.to_owned()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

/// Why a pgBackRest operation failed, and what to do about it.
mod error {
    use std::path::PathBuf;

    /// A pgBackRest operation that did not happen.
    #[derive(Debug, thiserror::Error)]
    pub enum PgBackRestError {
        /// The `pgbackrest` executable is not on `PATH`.
        #[error(
            "pgbackrest is not installed (not on PATH): install it with `apt-get install pgbackrest`"
        )]
        NotInstalled,
        /// `pgbackrest` could not be started.
        #[error("failed to run `pgbackrest {command}`")]
        Run {
            command: String,
            #[source]
            source: std::io::Error,
        },
        /// A pgBackRest command exited with an error. `stderr` holds the last lines it wrote
        /// (its `ERROR: [code]` line and hints); `next` says what to do, when that is clear.
        #[error(
            "`pgbackrest {command}` for {} failed ({}){}:\n{stderr}",
            target(*.shard),
            exit(*.exit_code),
            next.map(|next| format!("; {next}")).unwrap_or_default()
        )]
        Failed {
            command: String,
            shard: Option<usize>,
            exit_code: Option<i32>,
            stderr: String,
            next: Option<&'static str>,
        },
        /// The config file has no stanza for this shard.
        #[error(
            "{} has no stanza [shard-{shard}]: write it with Repository::write_local, or use a shard the repository knows",
            config.display()
        )]
        UnknownShard { shard: usize, config: PathBuf },
        /// The stanza lacks a setting an operation needs.
        #[error("[{stanza}] in {} has no {key}: add it", config.display())]
        MissingSetting {
            stanza: String,
            key: String,
            config: PathBuf,
        },
        /// A restore aimed at the shard's own data directory (or one inside or around it).
        #[error(
            "refusing to restore shard-{shard} into {}: that is the shard's own data directory; restore into a new, empty directory and start a cluster there on another port",
            path.display()
        )]
        RestoreOverOwnData { shard: usize, path: PathBuf },
        /// A restore aimed at a directory that already holds files.
        #[error(
            "refusing to restore into {}: it is not empty; choose a new directory (or remove it if it holds an old restore)",
            path.display()
        )]
        RestoreTargetNotEmpty { path: PathBuf },
        /// `backup` succeeded but `info` lists no backup for the stanza.
        #[error(
            "stanza shard-{shard} lists no backup after a successful backup; see `pgbackrest --config={} info`",
            config.display()
        )]
        NoBackupListed { shard: usize, config: PathBuf },
        /// `pgbackrest info --output=json` said something this module does not understand.
        #[error("could not read `pgbackrest info --output=json`: {0}; is this pgBackRest 2.x?")]
        Info(String),
        /// A value that cannot be used as given (an LSN, a segment name, a label, a point).
        #[error("{0}")]
        Invalid(String),
        /// The clusters' OS user could not be found or given a path.
        #[error(transparent)]
        ClusterOwner(#[from] orders_dev::DevError),
        /// A file or directory of the repository could not be read or written.
        #[error("failed to {action}")]
        Io {
            action: String,
            #[source]
            source: std::io::Error,
        },
    }

    impl PgBackRestError {
        /// A failed command, with the tail of `stderr` and advice for the exit codes whose
        /// cause is clear.
        pub(super) fn failed(
            command: &str,
            shard: Option<usize>,
            exit_code: Option<i32>,
            stderr: &str,
        ) -> Self {
            let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = lines[lines.len().saturating_sub(super::STDERR_TAIL_LINES)..].join("\n");
            Self::Failed {
                command: command.to_owned(),
                shard,
                exit_code,
                next: next_step(exit_code, stderr),
                stderr: tail,
            }
        }
    }

    /// What to do after pgBackRest exited with `exit_code` (its error code, listed in its
    /// `build/error.yaml`), when the cause is clear from it.
    fn next_step(exit_code: Option<i32>, stderr: &str) -> Option<&'static str> {
        Some(match exit_code? {
            // ConfigError "no database found" follows a DbConnectError on every pg.
            27 if stderr.contains("no database found") => CLUSTER_DOWN,
            56 => CLUSTER_DOWN,
            37 if stderr.contains("pg1-path") => {
                "the stanza is not in the config file: write it with Repository::write_local"
            }
            38 => "a PostgreSQL is running on the restore directory: stop it or restore elsewhere",
            40 => "restore into a new, empty directory",
            47 | 53 | 64 => {
                "the clusters' OS user cannot write there: check the owner of that path and that every parent directory is reachable by it"
            }
            50 => {
                "another pgbackrest command holds this stanza's lock: wait for it to finish and retry"
            }
            55 => {
                "the stanza has not been created: run Repository::create_stanza for this shard first"
            }
            68 | 87 => {
                "the cluster does not archive into this repository: start it with PostgresCluster::start_archiving and Repository::wal_archive for this shard"
            }
            82 => {
                "WAL did not reach the archive in time: look for archive_command errors in the cluster's log"
            }
            _ => return None,
        })
    }

    const CLUSTER_DOWN: &str = "pgBackRest could not connect to the shard's cluster: start it with its Unix socket in the stanza's pg1-socket-path (PostgresCluster::start_archiving does), then retry";

    fn target(shard: Option<usize>) -> String {
        shard.map_or_else(|| "the repository".to_owned(), super::stanza_name)
    }

    fn exit(code: Option<i32>) -> String {
        code.map_or_else(
            || "killed by a signal".to_owned(),
            |code| format!("exit code {code}"),
        )
    }

    /// Tags an I/O error with what was being done.
    pub(super) fn io(action: String) -> impl FnOnce(std::io::Error) -> PgBackRestError {
        move |source| PgBackRestError::Io { action, source }
    }
}

/// pgBackRest's config file: written for local clusters, read back for the stanzas' paths.
mod config {
    use super::{PgBackRestError, RETAINED_FULL_BACKUPS, Result, stanza_name};
    use std::collections::BTreeMap;
    use std::fmt::Write;
    use std::path::{Path, PathBuf};

    /// The directories of a local repository, under its own directory.
    pub(super) const LOCAL_DIRS: [&str; 4] = ["repo", "log", "lock", "spool"];

    /// A shard's cluster on this machine, as its stanza describes it.
    #[derive(Debug, Clone)]
    pub struct LocalShard {
        /// The cluster's data directory (`pg1-path`).
        pub data_dir: PathBuf,
        /// Its TCP port; pgBackRest uses it to name the Unix socket (`pg1-port`).
        pub port: u16,
        /// Where the cluster puts its Unix socket (`pg1-socket-path`): pgBackRest connects
        /// through it, as the superuser `orders`.
        pub socket_dir: PathBuf,
    }

    /// The config file of a repository under `dir` for `shards`.
    pub(super) fn local(dir: &Path, shards: &[LocalShard]) -> Result<String> {
        let mut text = String::from(
            "# Written by orders (Repository::write_local).\n\
             # start-fast: a backup begins with an immediate checkpoint, not a spread one.\n\
             # compress-type=lz4: a fraction of gzip's CPU, for backups and every WAL segment.\n\
             [global]\n",
        );
        for (key, sub) in [
            ("repo1-path", "repo"),
            ("log-path", "log"),
            ("lock-path", "lock"),
            ("spool-path", "spool"),
        ] {
            let _ = writeln!(text, "{key}={}", line_safe(&dir.join(sub))?);
        }
        let _ = writeln!(
            text,
            "repo1-retention-full={RETAINED_FULL_BACKUPS}\nstart-fast=y\ncompress-type=lz4"
        );
        for (index, shard) in shards.iter().enumerate() {
            let _ = write!(
                text,
                "\n[{}]\npg1-path={}\npg1-port={}\npg1-socket-path={}\npg1-user=orders\n",
                stanza_name(index),
                line_safe(&shard.data_dir)?,
                shard.port,
                line_safe(&shard.socket_dir)?,
            );
        }
        Ok(text)
    }

    /// `path`, absolute, as a config value (one line of UTF-8).
    fn line_safe(path: &Path) -> Result<String> {
        let absolute = std::path::absolute(path)
            .map_err(super::error::io(format!("resolve {}", path.display())))?;
        match absolute.to_str() {
            Some(text) if !text.contains(['\n', '\r']) => Ok(text.to_owned()),
            _ => Err(PgBackRestError::Invalid(format!(
                "{} cannot go into a pgBackRest config file: use a path of UTF-8 without line breaks",
                path.display()
            ))),
        }
    }

    /// The `key=value` lines of an INI file, by section.
    #[derive(Debug, Clone, Default)]
    pub(super) struct Settings {
        sections: BTreeMap<String, BTreeMap<String, String>>,
    }

    impl Settings {
        /// Reads pgBackRest's INI format: `[section]`, `key=value`, `#` comments.
        pub(super) fn parse(text: &str) -> Self {
            let mut settings = Self::default();
            let mut section = String::new();
            for line in text.lines().map(str::trim) {
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                    section = name.trim().to_owned();
                    settings.sections.entry(section.clone()).or_default();
                } else if let Some((key, value)) = line.split_once('=') {
                    settings
                        .sections
                        .entry(section.clone())
                        .or_default()
                        .insert(key.trim().to_owned(), value.trim().to_owned());
                }
            }
            settings
        }

        pub(super) fn has_section(&self, section: &str) -> bool {
            self.sections.contains_key(section)
        }

        pub(super) fn get(&self, section: &str, key: &str) -> Option<&str> {
            self.sections.get(section)?.get(key).map(String::as_str)
        }
    }
}

/// Positions in the WAL: LSNs and the 16 MB segment files the archive holds.
mod wal {
    use super::{BackupInfo, PgBackRestError, Result};

    /// WAL segment size of our clusters (`initdb`'s default).
    const SEGMENT_BYTES: u64 = 16 * 1024 * 1024;
    /// Segments per 4 GB "log" (the middle 8 hex digits of a segment name).
    const SEGMENTS_PER_LOG: u64 = 0x1_0000_0000 / SEGMENT_BYTES;

    /// A position in a cluster's WAL, written `3/A5000028` (high and low 32 bits in hex).
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct Lsn(pub u64);

    impl std::str::FromStr for Lsn {
        type Err = PgBackRestError;

        fn from_str(text: &str) -> Result<Self> {
            let half = |part: &str| {
                (!part.is_empty() && part.len() <= 8)
                    .then(|| u32::from_str_radix(part, 16).ok())
                    .flatten()
            };
            text.split_once('/')
                .and_then(|(high, low)| Some((half(high)?, half(low)?)))
                .map(|(high, low)| Lsn((u64::from(high) << 32) | u64::from(low)))
                .ok_or_else(|| {
                    PgBackRestError::Invalid(format!(
                        "{text:?} is not a PostgreSQL LSN (like 0/3000028)"
                    ))
                })
        }
    }

    impl std::fmt::Display for Lsn {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
        }
    }

    /// A WAL segment file: its timeline and its number since the cluster began. Ordered by
    /// timeline first, as its name sorts.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
    pub struct WalSegment {
        pub timeline: u32,
        pub number: u64,
    }

    impl WalSegment {
        /// The segment holding the WAL record that ends at `lsn` on `timeline`, named as
        /// PostgreSQL's `pg_walfile_name(lsn)` names it: the LSNs PostgreSQL hands out
        /// (`pg_create_restore_point`, `pg_current_wal_lsn`, a backup's stop LSN) point just
        /// past a record, so an LSN on a segment boundary belongs to the segment before it.
        pub fn holding(lsn: Lsn, timeline: u32) -> Self {
            Self {
                timeline,
                number: lsn.0.saturating_sub(1) / SEGMENT_BYTES,
            }
        }
    }

    impl std::fmt::Display for WalSegment {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(
                f,
                "{:08X}{:08X}{:08X}",
                self.timeline,
                self.number / SEGMENTS_PER_LOG,
                self.number % SEGMENTS_PER_LOG
            )
        }
    }

    impl std::str::FromStr for WalSegment {
        type Err = PgBackRestError;

        fn from_str(name: &str) -> Result<Self> {
            let field = |range: std::ops::Range<usize>| {
                name.get(range)
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
            };
            match (name.len(), field(0..8), field(8..16), field(16..24)) {
                (24, Some(timeline), Some(log), Some(segment))
                    if u64::from(segment) < SEGMENTS_PER_LOG =>
                {
                    Ok(Self {
                        timeline,
                        number: u64::from(log) * SEGMENTS_PER_LOG + u64::from(segment),
                    })
                }
                _ => Err(PgBackRestError::Invalid(format!(
                    "{name:?} is not the name of a 16 MB WAL segment (like 000000010000000000000003)"
                ))),
            }
        }
    }

    /// Whether restoring `backup` and replaying the archive reaches a restore point at
    /// `point` on `timeline`: the backup must have ended at or before the point (a restore
    /// cannot go back before its backup's end), and the archive, holding WAL up to
    /// `archived_up_to`, must hold the segment with the point in it.
    ///
    /// Segments compare timeline first: an archive whose newest segment is on a later
    /// timeline counts as holding everything before it, which holds for the timeline it
    /// branched from up to the branch only.
    pub fn can_reach(
        backup: &BackupInfo,
        archived_up_to: Option<WalSegment>,
        point: Lsn,
        timeline: u32,
    ) -> bool {
        backup.stop_lsn <= point
            && archived_up_to.is_some_and(|max| max >= WalSegment::holding(point, timeline))
    }
}

/// What `pgbackrest info --output=json` reports, in our types.
mod info {
    use super::{BackupKind, BackupLabel, DateTime, Lsn, PgBackRestError, Result, Utc, WalSegment};
    use serde::Deserialize;

    /// A stanza (a shard) of the repository.
    #[derive(Debug, Clone)]
    pub struct StanzaInfo {
        /// `shard-<index>`.
        pub name: String,
        pub status: StanzaStatus,
        /// Oldest first.
        pub backups: Vec<BackupInfo>,
        /// The WAL archived for the cluster's current database (system id and version);
        /// `None` while nothing is archived.
        pub archive: Option<WalRange>,
    }

    impl StanzaInfo {
        /// The shard index in the stanza's name, when it follows `shard-<index>`.
        pub fn shard(&self) -> Option<usize> {
            self.name.strip_prefix("shard-")?.parse().ok()
        }

        /// The newest backup from which a restore reaches `point` on `timeline` (see
        /// [`super::can_reach`]).
        pub fn backup_reaching(&self, point: Lsn, timeline: u32) -> Option<&BackupInfo> {
            let archived_up_to = self.archive.map(|archive| archive.max);
            self.backups
                .iter()
                .rev()
                .find(|backup| super::can_reach(backup, archived_up_to, point, timeline))
        }
    }

    /// pgBackRest's verdict on a stanza.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub struct StanzaStatus {
        /// 0 ok, 1 missing stanza path, 2 no valid backups, 3 missing stanza data, … 99 other.
        pub code: i64,
        pub message: String,
    }

    impl StanzaStatus {
        pub fn is_ok(&self) -> bool {
            self.code == 0
        }
    }

    /// The oldest and newest segment in the archive.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub struct WalRange {
        pub min: WalSegment,
        pub max: WalSegment,
    }

    /// One backup of a stanza.
    #[derive(Debug, Clone)]
    pub struct BackupInfo {
        pub label: BackupLabel,
        pub kind: BackupKind,
        /// The backup it builds on (incremental and differential backups).
        pub prior: Option<BackupLabel>,
        pub started_at: DateTime<Utc>,
        pub stopped_at: DateTime<Utc>,
        pub start_lsn: Lsn,
        /// A restore of this backup is consistent from here on, not earlier.
        pub stop_lsn: Lsn,
        /// The WAL segments the backup needs to be consistent (absent for backups taken
        /// without archive checks).
        pub first_wal: Option<WalSegment>,
        pub last_wal: Option<WalSegment>,
    }

    /// Parses the output of `pgbackrest info --output=json`.
    pub(super) fn parse(json: &[u8]) -> Result<Vec<StanzaInfo>> {
        let raw: Vec<RawStanza> =
            serde_json::from_slice(json).map_err(|e| PgBackRestError::Info(e.to_string()))?;
        raw.into_iter().map(RawStanza::into_info).collect()
    }

    #[derive(Deserialize)]
    struct RawStanza {
        name: String,
        status: RawStatus,
        #[serde(default)]
        backup: Vec<RawBackup>,
        #[serde(default)]
        archive: Vec<RawArchive>,
    }

    #[derive(Deserialize)]
    struct RawStatus {
        code: i64,
        message: String,
    }

    #[derive(Deserialize)]
    struct RawArchive {
        min: Option<String>,
        max: Option<String>,
    }

    #[derive(Deserialize)]
    struct RawBackup {
        label: String,
        #[serde(rename = "type")]
        kind: String,
        prior: Option<String>,
        timestamp: RawRange<i64>,
        lsn: RawRange<String>,
        archive: Option<RawRange<Option<String>>>,
    }

    #[derive(Deserialize)]
    struct RawRange<T> {
        start: T,
        stop: T,
    }

    impl RawStanza {
        fn into_info(self) -> Result<StanzaInfo> {
            // Entries follow the stanza's database history; the last is the current one.
            let archive = match self.archive.into_iter().last() {
                Some(RawArchive {
                    min: Some(min),
                    max: Some(max),
                }) => Some(WalRange {
                    min: min.parse()?,
                    max: max.parse()?,
                }),
                _ => None,
            };
            Ok(StanzaInfo {
                name: self.name,
                status: StanzaStatus {
                    code: self.status.code,
                    message: self.status.message,
                },
                backups: self
                    .backup
                    .into_iter()
                    .map(RawBackup::into_info)
                    .collect::<Result<_>>()?,
                archive,
            })
        }
    }

    impl RawBackup {
        fn into_info(self) -> Result<BackupInfo> {
            let time = |seconds: i64| {
                DateTime::from_timestamp(seconds, 0).ok_or_else(|| {
                    PgBackRestError::Info(format!("backup {} has timestamp {seconds}", self.label))
                })
            };
            let segment = |name: Option<String>| name.map(|n| n.parse()).transpose();
            let (first_wal, last_wal) = match self.archive {
                Some(range) => (segment(range.start)?, segment(range.stop)?),
                None => (None, None),
            };
            Ok(BackupInfo {
                kind: BackupKind::from_pgbackrest(&self.kind).ok_or_else(|| {
                    PgBackRestError::Info(format!(
                        "backup {} has unknown type {:?}",
                        self.label, self.kind
                    ))
                })?,
                prior: self.prior.as_deref().map(str::parse).transpose()?,
                started_at: time(self.timestamp.start)?,
                stopped_at: time(self.timestamp.stop)?,
                start_lsn: self.lsn.start.parse()?,
                stop_lsn: self.lsn.stop.parse()?,
                first_wal,
                last_wal,
                label: self.label.parse()?,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lsn(text: &str) -> Lsn {
        text.parse().unwrap()
    }

    fn segment(name: &str) -> WalSegment {
        name.parse().unwrap()
    }

    /// What pgBackRest 2.45 printed for a stanza with one full backup.
    const ONE_FULL_BACKUP: &str = r#"[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000004","min":"000000010000000000000001"}],"backup":[{"archive":{"start":"000000010000000000000002","stop":"000000010000000000000003"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":22992466,"repository":{"delta":3043558,"size":3043558},"size":22992466},"label":"20261207-085721F","lsn":{"start":"0/2000028","stop":"0/3000050"},"prior":null,"reference":null,"timestamp":{"start":1796633841,"stop":1796633846},"type":"full"}],"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7716483552067584916,"version":"15"}],"name":"shard-0","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]"#;

    /// What it printed for a stanza in the config that was never created.
    const MISSING_STANZA: &str = r#"[{"archive":[],"backup":[],"cipher":"none","db":[],"name":"shard-0","repo":[{"cipher":"none","key":1,"status":{"code":1,"message":"missing stanza path"}}],"status":{"code":1,"lock":{"backup":{"held":false}},"message":"missing stanza path"}}]"#;

    #[test]
    fn an_lsn_reads_and_prints_as_postgresql_writes_it() {
        assert_eq!(lsn("0/3000028"), Lsn(0x0300_0028));
        assert_eq!(lsn("2/A5000000"), Lsn(0x2_A500_0000));
        assert_eq!(lsn("2/a5000000").to_string(), "2/A5000000");
        assert_eq!(Lsn(0).to_string(), "0/0");
    }

    #[test]
    fn text_that_is_not_an_lsn_is_rejected() {
        for bad in ["", "0", "/1", "1/", "0/123456789", "x/1", "0/3000028/1"] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn a_segment_is_named_like_pg_walfile_name_names_it() {
        let name = |text, timeline| WalSegment::holding(lsn(text), timeline).to_string();
        assert_eq!(name("0/3000028", 1), "000000010000000000000003");
        assert_eq!(name("0/40012F8", 1), "000000010000000000000004");
        assert_eq!(name("2/A5000028", 3), "0000000300000002000000A5");
        assert_eq!(name("1/10", 1), "000000010000000100000000");
    }

    #[test]
    fn an_lsn_on_a_segment_boundary_belongs_to_the_segment_before_it() {
        let name = |text| WalSegment::holding(lsn(text), 1).to_string();
        assert_eq!(name("0/4000000"), "000000010000000000000003");
        assert_eq!(name("1/0"), "0000000100000000000000FF");
        assert_eq!(name("0/0"), "000000010000000000000000");
    }

    #[test]
    fn a_segment_name_round_trips() {
        for name in ["000000010000000000000003", "0000000300000002000000A5"] {
            assert_eq!(segment(name).to_string(), name);
        }
        assert!(segment("000000010000000000000003") < segment("000000010000000100000000"));
        assert!(segment("0000000100000002000000FF") < segment("000000020000000000000001"));
    }

    #[test]
    fn text_that_is_not_a_segment_name_is_rejected() {
        for bad in [
            "",
            "00000001000000000000003",
            "0000000100000000000001000",
            "00000001000000000000010G",
            "000000010000000000000100",
        ] {
            assert!(bad.parse::<WalSegment>().is_err(), "{bad:?} parsed");
        }
    }

    fn full_backup_stopping_at(stop: &str) -> BackupInfo {
        let mut backup = info::parse(ONE_FULL_BACKUP.as_bytes()).unwrap()[0].backups[0].clone();
        backup.stop_lsn = lsn(stop);
        backup
    }

    #[test]
    fn a_backup_reaches_a_later_point_whose_segment_is_archived() {
        let backup = full_backup_stopping_at("0/3000050");
        let archived = Some(segment("000000010000000000000004"));
        assert!(can_reach(&backup, archived, lsn("0/40012F8"), 1));
        assert!(can_reach(&backup, archived, lsn("0/3000050"), 1));
    }

    #[test]
    fn a_backup_does_not_reach_a_point_before_its_end() {
        let backup = full_backup_stopping_at("0/3000050");
        let archived = Some(segment("000000010000000000000009"));
        assert!(!can_reach(&backup, archived, lsn("0/3000028"), 1));
    }

    #[test]
    fn a_point_whose_segment_is_not_archived_yet_is_not_reached() {
        let backup = full_backup_stopping_at("0/3000050");
        let archived = Some(segment("000000010000000000000003"));
        assert!(!can_reach(&backup, archived, lsn("0/40012F8"), 1));
        assert!(!can_reach(&backup, None, lsn("0/3000060"), 1));
    }

    #[test]
    fn info_of_a_stanza_with_a_full_backup_is_read_in_our_types() {
        let stanzas = info::parse(ONE_FULL_BACKUP.as_bytes()).unwrap();
        let [stanza] = stanzas.as_slice() else {
            panic!("{stanzas:?}")
        };
        assert_eq!(stanza.name, "shard-0");
        assert_eq!(stanza.shard(), Some(0));
        assert!(stanza.status.is_ok());
        assert_eq!(
            stanza.archive,
            Some(WalRange {
                min: segment("000000010000000000000001"),
                max: segment("000000010000000000000004"),
            })
        );
        let [backup] = stanza.backups.as_slice() else {
            panic!("{:?}", stanza.backups)
        };
        assert_eq!(backup.label.as_str(), "20261207-085721F");
        assert_eq!(backup.kind, BackupKind::Full);
        assert_eq!(backup.prior, None);
        assert_eq!(backup.start_lsn, lsn("0/2000028"));
        assert_eq!(backup.stop_lsn, lsn("0/3000050"));
        assert_eq!(backup.first_wal, Some(segment("000000010000000000000002")));
        assert_eq!(backup.last_wal, Some(segment("000000010000000000000003")));
        assert_eq!(backup.stopped_at.timestamp(), 1796633846);
        assert_eq!(
            stanza
                .backup_reaching(lsn("0/40012F8"), 1)
                .map(|b| &b.label),
            Some(&backup.label)
        );
        assert!(stanza.backup_reaching(lsn("0/5000028"), 1).is_none());
    }

    #[test]
    fn info_of_a_stanza_never_created_says_so() {
        let stanzas = info::parse(MISSING_STANZA.as_bytes()).unwrap();
        assert_eq!(stanzas[0].status.code, 1);
        assert_eq!(stanzas[0].status.message, "missing stanza path");
        assert!(stanzas[0].backups.is_empty() && stanzas[0].archive.is_none());
    }

    #[test]
    fn the_config_of_local_shards_names_a_stanza_per_shard() {
        let shards = [0, 1].map(|i| LocalShard {
            data_dir: PathBuf::from(format!("/srv/shard{i}")),
            port: 5432 + i,
            socket_dir: PathBuf::from("/tmp/sockets"),
        });
        let text = config::local(Path::new("/srv/backups"), &shards).unwrap();
        let settings = config::Settings::parse(&text);
        assert_eq!(
            settings.get("global", "repo1-path"),
            Some("/srv/backups/repo")
        );
        assert_eq!(
            settings.get("global", "spool-path"),
            Some("/srv/backups/spool")
        );
        assert_eq!(settings.get("global", "start-fast"), Some("y"));
        assert_eq!(settings.get("shard-1", "pg1-path"), Some("/srv/shard1"));
        assert_eq!(settings.get("shard-1", "pg1-port"), Some("5433"));
        assert_eq!(
            settings.get("shard-0", "pg1-socket-path"),
            Some("/tmp/sockets")
        );
        assert_eq!(settings.get("shard-0", "pg1-user"), Some("orders"));
        assert!(!settings.has_section("shard-2"));
    }

    #[test]
    fn a_failed_command_names_itself_its_shard_its_exit_code_and_what_to_do() {
        let error = PgBackRestError::failed(
            "backup",
            Some(1),
            Some(55),
            "WARN: something\nERROR: [055]: unable to load info file\n       HINT: has a stanza-create been performed?\n",
        );
        let message = error.to_string();
        assert!(message.starts_with("`pgbackrest backup` for shard-1 failed (exit code 55); the stanza has not been created"), "{message}");
        assert!(
            message.ends_with("HINT: has a stanza-create been performed?"),
            "{message}"
        );
    }

    #[test]
    fn the_archive_command_pushes_to_the_shards_stanza_through_the_shell() {
        let repository = |config: &str| Repository {
            config: PathBuf::from(config),
            settings: config::Settings::default(),
            binary: PathBuf::from("/usr/bin/pgbackrest"),
            owner: None,
        };
        assert_eq!(
            repository("/srv/backups/pgbackrest.conf").archive_command(2),
            "/usr/bin/pgbackrest --config=/srv/backups/pgbackrest.conf --stanza=shard-2 archive-push %p"
        );
        assert_eq!(
            repository("/srv/my backups/100%p.conf").archive_command(0),
            "/usr/bin/pgbackrest '--config=/srv/my backups/100%%p.conf' --stanza=shard-0 archive-push %p"
        );
    }

    #[test]
    fn a_word_with_shell_characters_is_quoted() {
        assert_eq!(shell_word("/usr/bin/pgbackrest"), "/usr/bin/pgbackrest");
        assert_eq!(shell_word("--config=/a b/c'd"), r"'--config=/a b/c'\''d'");
    }
}
