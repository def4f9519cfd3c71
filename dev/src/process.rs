//! Child processes that cannot outlive their owner.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::error::{DevError, Result, io};

/// A service process we started; stopped on [`ChildService::stop`] or when dropped.
#[derive(Debug)]
pub struct ChildService {
    name: String,
    child: Option<Child>,
    stop_signal: Signal,
}

impl ChildService {
    /// Spawns `command` so that it receives SIGKILL when this process dies.
    ///
    /// `PR_SET_PDEATHSIG` fires when the spawning *thread* exits, so the spawn happens on a
    /// dedicated thread that parks for the rest of the process's life.
    pub fn spawn(name: &str, mut command: Command, stop_signal: Signal) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("{name}-parent"))
            .spawn(move || {
                use std::os::unix::process::CommandExt;
                // Own process group: Ctrl-C at the terminal reaches only our process, which
                // then stops the worker first and the services after it.
                command.process_group(0);
                let owner = nix::unistd::getpid();
                // SAFETY: prctl and getppid are async-signal-safe and only read `owner`, a
                // plain integer copied into the child.
                unsafe {
                    command.pre_exec(move || {
                        nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                            .map_err(std::io::Error::from)?;
                        // The owner may have died between fork and prctl: then nobody will
                        // send the signal, so do not start at all.
                        if nix::unistd::getppid() != owner {
                            return Err(std::io::Error::other("owner exited before exec"));
                        }
                        Ok(())
                    });
                }
                let _ = tx.send(command.spawn());
                loop {
                    std::thread::park();
                }
            })
            .map_err(io(format!("start the thread that supervises {name}")))?;
        let spawned = rx.recv().map_err(|_| DevError::Spawn {
            name: name.to_owned(),
            source: std::io::Error::other("its supervising thread vanished"),
        })?;
        let child = spawned.map_err(|source| DevError::Spawn {
            name: name.to_owned(),
            source,
        })?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            stop_signal,
        })
    }

    /// Fails if the child already exited (e.g. it could not bind its port).
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child
                .try_wait()
                .map_err(io(format!("check on {}", self.name)))?
        {
            return Err(DevError::ExitedEarly {
                name: self.name.clone(),
                status,
            });
        }
        Ok(())
    }

    /// Waits until `ready` holds, failing early, with a pointer to `log`, if the child exits
    /// first (e.g. because it could not bind its port).
    pub(crate) fn wait_ready(
        &mut self,
        timeout: Duration,
        log: &Path,
        mut ready: impl FnMut() -> bool,
    ) -> Result<()> {
        let what = self.name.clone();
        wait_until(&what, timeout, || self.ensure_running().is_err() || ready())?;
        self.ensure_running().map_err(|e| DevError::DidNotStart {
            name: what,
            log: log.to_owned(),
            source: Box::new(e),
        })
    }

    /// Kills the child at once (SIGKILL), like a machine losing power under it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits up to `timeout` for the child to exit on its own; returns whether it did.
    pub fn wait_for_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.child.as_mut().map(Child::try_wait) {
                None | Some(Ok(Some(_))) => return true,
                _ => std::thread::sleep(Duration::from_millis(50)),
            }
        }
        false
    }

    /// The child's process id (0 once it has been reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Asks the child to stop with its stop signal and waits up to `grace`, then kills it.
    pub fn stop(&mut self, grace: Duration) {
        self.stop_with(self.stop_signal, grace);
    }

    /// [`Self::stop`] with another signal.
    pub fn stop_with(&mut self, signal: Signal, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return; // Already exited and reaped: its pid may belong to someone else now.
        }
        let _ = kill(Pid::from_raw(child.id() as i32), signal);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        tracing::warn!(service = %self.name, "did not stop in time; killing it");
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for ChildService {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(10));
    }
}

/// Sends `command`'s output to the end of `log` and gives it no input.
pub(crate) fn log_output_to(command: &mut Command, log: &Path) -> Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io(format!("open {}", log.display())))?;
    let stdout = file
        .try_clone()
        .map_err(io(format!("share {}", log.display())))?;
    command.stdin(Stdio::null()).stdout(stdout).stderr(file);
    Ok(())
}

/// Polls `ready` every 100 ms until it returns true or `timeout` passes.
fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Err(DevError::TimedOut {
        what: what.to_owned(),
        timeout,
    })
}
