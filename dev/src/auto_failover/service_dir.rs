//! The directory of one pg_autoctl service and the command environment that keeps it there:
//! pg_autoctl reads and writes only under it, runs as the cluster owner, and sees none of
//! our own `PG*` variables.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{INSTALL_HINT, SOCKET_DIR};
use crate::error::{DevError, Result, io};
use crate::postgres::{OsUser, as_cluster_owner, pg_binary};

/// The directory of one pg_autoctl service (the monitor or a node).
#[derive(Debug)]
pub(super) struct ServiceDir {
    root: PathBuf,
}

impl ServiceDir {
    /// Creates `root` and pg_autoctl's XDG directories in it, all owned by `owner`.
    pub(super) fn create(root: &Path, owner: &Option<OsUser>) -> Result<Self> {
        for dir in ["", "config", "data", "run"].map(|sub| root.join(sub)) {
            fs::create_dir_all(&dir).map_err(io(format!("create {}", dir.display())))?;
            if let Some(user) = owner {
                std::os::unix::fs::chown(&dir, Some(user.uid), Some(user.gid)).map_err(io(
                    format!("give {} to OS user {:?}", dir.display(), user.name),
                ))?;
            }
        }
        let run = root.join("run");
        fs::set_permissions(&run, fs::Permissions::from_mode(0o700))
            .map_err(io(format!("make {} private", run.display())))?;
        // Absolute: pg_autoctl names its files after the data directory's path, and a
        // postmaster is recognised by the `-D` it was started with.
        let root = fs::canonicalize(root).map_err(io(format!("resolve {}", root.display())))?;
        Ok(Self { root })
    }

    pub(super) fn pgdata(&self) -> PathBuf {
        self.root.join("pgdata")
    }

    pub(super) fn log(&self) -> PathBuf {
        self.root.join("pg_autoctl.log")
    }

    /// Whether `pg_autoctl create postgres` finished here before: the keeper's state file.
    pub(super) fn keeper_initialized(&self) -> bool {
        let pgdata = self.pgdata();
        self.root
            .join("data/pg_autoctl")
            .join(pgdata.strip_prefix("/").unwrap_or(&pgdata))
            .join("pg_autoctl.state")
            .is_file()
    }

    /// `pg_autoctl <subcommand> --pgdata <pgdata>` as the cluster owner, in this directory's
    /// environment.
    pub(super) fn pg_autoctl(
        &self,
        owner: &Option<OsUser>,
        subcommand: &[&str],
    ) -> Result<Command> {
        // pg_autoctl finds pg_ctl on PATH, and the other server programs next to it: the real
        // directory, then, as `pg_ctl` may be a symlink (/usr/local/bin/pg_ctl here).
        let pg_ctl = pg_binary("pg_ctl")?;
        let pg_bin = fs::canonicalize(&pg_ctl)
            .map_err(io(format!("resolve {}", pg_ctl.display())))?
            .parent()
            .map(Path::to_owned)
            .unwrap_or_default();
        // Not our own PATH: pg_autoctl logs an error for each of its directories the cluster
        // owner may not read (root's ~/.cargo/bin and the like).
        let mut path = OsString::from(&pg_bin);
        path.push(":/usr/local/bin:/usr/bin:/bin");
        let mut command = as_cluster_owner(Command::new(pg_autoctl_binary(&pg_bin)?), owner);
        // Our own PGUSER, PGPORT and the like would redirect pg_autoctl's connections.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                command.env_remove(key);
            }
        }
        command
            .args(subcommand)
            .arg("--pgdata")
            .arg(self.pgdata())
            // Our working directory may be unreachable for the cluster owner.
            .current_dir(&self.root)
            .env("PATH", path)
            .env("HOME", &self.root)
            .env("XDG_CONFIG_HOME", self.root.join("config"))
            .env("XDG_DATA_HOME", self.root.join("data"))
            .env("XDG_RUNTIME_DIR", self.root.join("run"))
            .env("PG_REGRESS_SOCK_DIR", SOCKET_DIR)
            .env("PGHOST", SOCKET_DIR);
        Ok(command)
    }
}

fn pg_autoctl_binary(pg_bin: &Path) -> Result<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([pg_bin.to_owned()])
        .map(|dir| dir.join("pg_autoctl"))
        .find(|path| path.is_file())
        .ok_or(DevError::NotInstalled {
            program: "pg_auto_failover's `pg_autoctl`".into(),
            fix: INSTALL_HINT,
        })
}
