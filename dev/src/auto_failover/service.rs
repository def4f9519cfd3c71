//! One `pg_autoctl` process and its whole process group: spawned with a watchdog, polled
//! without being reaped, stopped politely or killed at once. Nothing it started may outlive
//! it, whichever way this process ends.

use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;
use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::POLL;
use crate::error::{DevError, Result};
use crate::process::{ChildService, log_output_to};

/// How long a stopping pg_autoctl gets to shut its postgres down before it is killed.
pub(super) const STOP_GRACE: Duration = Duration::from_secs(30);

/// A `pg_autoctl` process and everything it starts (its sub-processes, postgres), all in the
/// process group it leads: killing that group is the only way to be sure none survive.
#[derive(Debug)]
pub(super) struct AutoctlService {
    name: String,
    log: PathBuf,
    process: Option<ChildService>,
    /// Kills the group if this process dies without dropping us; see [`arm_watchdog`].
    watchdog: Option<Child>,
}

impl AutoctlService {
    pub(super) fn spawn(name: &str, mut command: Command, log: &Path) -> Result<Self> {
        log_output_to(&mut command, log)?;
        let process = ChildService::spawn(name, command, Signal::SIGINT)?;
        let mut service = Self {
            name: name.to_owned(),
            log: log.to_owned(),
            process: Some(process),
            watchdog: None,
        };
        let group = service.group().unwrap_or(Pid::from_raw(0));
        service.watchdog = Some(arm_watchdog(group).map_err(|source| DevError::Spawn {
            name: format!("the watchdog of {name}"),
            source,
        })?);
        Ok(service)
    }

    /// ChildService starts each child as the leader of a new process group.
    fn group(&self) -> Option<Pid> {
        let pid = self.process.as_ref()?.pid();
        (pid != 0).then(|| Pid::from_raw(pid as i32))
    }

    /// How pg_autoctl exited, if it has. It stays unreaped, so its group id cannot be
    /// reused before [`Self::kill`] signals the group.
    pub(super) fn exit_status(&self) -> Option<ExitStatus> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        match waitid(Id::Pid(self.group()?), flags) {
            Ok(WaitStatus::Exited(_, code)) => Some(ExitStatus::from_raw(code << 8)),
            Ok(WaitStatus::Signaled(_, signal, _)) => Some(ExitStatus::from_raw(signal as i32)),
            _ => None,
        }
    }

    /// The error for pg_autoctl having exited with `status` when it should not have.
    pub(super) fn exited(&self, status: ExitStatus) -> DevError {
        DevError::DidNotStart {
            name: self.name.clone(),
            log: self.log.clone(),
            source: Box::new(DevError::ExitedEarly {
                name: self.name.clone(),
                status,
            }),
        }
    }

    /// Waits for a one-shot pg_autoctl command; fails with the end of its log unless it
    /// succeeded.
    pub(super) async fn finish(mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.exit_status() {
                break status;
            }
            if Instant::now() >= deadline {
                self.kill();
                return Err(DevError::TimedOut {
                    what: format!("{} (output in {})", self.name, self.log.display()),
                    timeout,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        self.kill();
        if status.success() {
            return Ok(());
        }
        Err(DevError::CommandFailed {
            what: format!(
                "{} ({status}; full output in {})",
                self.name,
                self.log.display()
            ),
            output: format!("\n{}", log_tail(&self.log, 20)),
        })
    }

    /// SIGKILL to the whole group at once: what losing the machine looks like.
    pub(super) fn kill(&mut self) {
        if let Some(mut watchdog) = self.watchdog.take() {
            let _ = watchdog.kill();
            let _ = watchdog.wait();
        }
        if let Some(group) = self.group() {
            let _ = killpg(group, Signal::SIGKILL);
        }
        if let Some(mut process) = self.process.take() {
            process.kill(); // Reaps the leader, which the group kill ended.
        }
    }

    /// Asks pg_autoctl to stop (SIGINT: a fast shutdown of its postgres), then kills whatever
    /// is left of its group.
    pub(super) fn stop(&mut self, grace: Duration) {
        if let Some(group) = self.group()
            && self.exit_status().is_none()
        {
            let _ = kill(group, Signal::SIGINT);
            let deadline = Instant::now() + grace;
            while self.exit_status().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.exit_status().is_none() {
                tracing::warn!(service = %self.name, "did not stop in time; killing it");
            }
        }
        self.kill();
    }
}

impl Drop for AutoctlService {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// Starts a process that kills process group `group` once this process is gone, however it
/// went: it blocks reading a pipe whose only writer is us. [`AutoctlService::kill`] ends it
/// before ending the group, so it never signals a group id that may have been reused.
fn arm_watchdog(group: Pid) -> std::io::Result<Child> {
    use std::os::unix::process::CommandExt;
    Command::new("/bin/sh")
        .args(["-c", "read -r _line; kill -KILL -\"$1\"", "orders-watchdog"])
        .arg(group.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own group: Ctrl-C at a terminal must not take it down with us.
        .process_group(0)
        .spawn()
}

/// Polls `probe` until it yields, failing early, with a pointer to the log, if `service`
/// exits.
pub(super) async fn wait_for<T>(
    service: &AutoctlService,
    timeout: Duration,
    what: &str,
    mut probe: impl AsyncFnMut() -> Option<T>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = service.exit_status() {
            return Err(service.exited(status));
        }
        if let Some(found) = probe().await {
            return Ok(found);
        }
        if Instant::now() >= deadline {
            return Err(DevError::DidNotStart {
                name: service.name.clone(),
                log: service.log.clone(),
                source: Box::new(DevError::TimedOut {
                    what: what.to_owned(),
                    timeout,
                }),
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The last `lines` lines of `log`.
fn log_tail(log: &Path, lines: usize) -> String {
    let text = fs::read(log)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
