//! Child processes that cannot outlive their owner.

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

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
    pub fn spawn(name: &str, mut command: Command, stop_signal: Signal) -> anyhow::Result<Self> {
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
            .context("failed to start the supervising thread")?;
        let child = rx
            .recv()
            .context("supervising thread vanished")?
            .with_context(|| format!("failed to start {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child: Some(child),
            stop_signal,
        })
    }

    /// Fails if the child already exited (e.g. it could not bind its port).
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            bail!("{} exited early with {status}", self.name);
        }
        Ok(())
    }

    /// Waits until `ready` holds, failing early, with a pointer to `log`, if the child exits
    /// first (e.g. because it could not bind its port).
    pub fn wait_ready(
        &mut self,
        timeout: Duration,
        log: &Path,
        mut ready: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let what = self.name.clone();
        wait_until(&what, timeout, || self.ensure_running().is_err() || ready())?;
        self.ensure_running()
            .with_context(|| format!("{what} did not start; see {}", log.display()))
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

    /// Asks the child to stop with its stop signal and waits up to `grace`, then kills it.
    /// The child's process id (0 once it has been reaped).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            return; // Already exited and reaped: its pid may belong to someone else now.
        }
        let _ = kill(Pid::from_raw(child.id() as i32), self.stop_signal);
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
pub fn log_output_to(command: &mut Command, log: &Path) -> anyhow::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("failed to open {}", log.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file);
    Ok(())
}

/// Polls `ready` every 100 ms until it returns true or `timeout` passes.
fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if ready() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("timed out after {timeout:?} waiting for {what}")
}
