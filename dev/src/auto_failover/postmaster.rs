//! The postmaster serving a data directory, found by its `postmaster.pid` and checked against
//! its command line: for crashing it on purpose, and for killing one that escaped its
//! keeper's process group.

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// The postmaster serving `pgdata`, if one runs. A stale `postmaster.pid` may name a pid
/// that now belongs to another process: only one started with `-D pgdata` counts.
pub(super) fn postmaster_pid(pgdata: &Path) -> Option<Pid> {
    let pid_file = fs::read_to_string(pgdata.join("postmaster.pid")).ok()?;
    let pid: i32 = pid_file.lines().next()?.trim().parse().ok()?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let pgdata = pgdata.as_os_str().as_encoded_bytes();
    cmdline
        .split(|&b| b == 0)
        .any(|arg| arg == pgdata)
        .then(|| Pid::from_raw(pid))
}

/// Kills a postmaster still serving `pgdata` after its keeper's group is gone (one that
/// escaped the group), and waits for it to go.
pub(super) fn kill_stray_postmaster(pgdata: &Path) {
    let Some(pid) = postmaster_pid(pgdata) else {
        return;
    };
    tracing::warn!(%pid, pgdata = %pgdata.display(), "killing a postmaster its keeper left behind");
    let _ = kill(pid, Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(10);
    while postmaster_pid(pgdata) == Some(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}
