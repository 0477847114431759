//! The daemon as a process: what /proc says about it (descriptors, memory,
//! threads, CPU), its settled footprint for leak checks, and limits set on
//! it before it starts.

use std::process::Command;
use std::time::Duration;

use super::{Lbd, wait_until};

/// What `/proc` says about a process: open fds, resident memory, threads,
/// CPU time. Leak checks compare these before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStats {
    /// Entries in /proc/PID/fd.
    pub fds: usize,
    /// VmRSS in KiB.
    pub rss_kib: u64,
    /// Threads of the process.
    pub threads: u64,
    /// User + system CPU time in clock ticks (utime + stime of /proc/PID/stat).
    pub cpu_ticks: u64,
}

impl ProcStats {
    /// Reads the stats of `pid`.
    pub fn of(pid: i32) -> ProcStats {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let kib = |key: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {key} in /proc/{pid}/status"))
        };
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        // Fields after the parenthesised command name; utime and stime are
        // fields 14 and 15 of the whole line.
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        let fields: Vec<&str> = after_name.split_whitespace().collect();
        let cpu_ticks = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
        ProcStats {
            fds,
            rss_kib: kib("VmRSS:"),
            threads: kib("Threads:"),
            cpu_ticks,
        }
    }
}

/// Clock ticks per second, to turn [`ProcStats::cpu_ticks`] into time.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(ticks).unwrap_or(100)
}

impl Lbd {
    /// `/proc` stats of the daemon.
    pub fn stats(&self) -> ProcStats {
        ProcStats::of(self.pid())
    }
}

/// Lowers RLIMIT_NOFILE (soft and hard) of the child about to be spawned.
pub fn limit_fds(command: &mut Command, fds: u64) {
    // SAFETY: the closure runs in the forked child before exec and only
    // calls setrlimit, which is async-signal-safe.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(command, move || {
            let limit = libc::rlimit {
                rlim_cur: fds,
                rlim_max: fds,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
}

/// What a daemon holds once it has settled: compared before and after a
/// soak or a run of reloads to find leaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Open file descriptors.
    pub fds: usize,
    /// Resident memory in KiB.
    pub rss_kib: u64,
    /// `lbd_runtime_tasks`: tasks alive in the async runtime.
    pub tasks: u64,
}

impl Lbd {
    /// `lbd_runtime_tasks` from /metrics.
    pub fn runtime_tasks(&self) -> u64 {
        let (code, body) = self.get("/metrics");
        assert_eq!(code, 200);
        body.lines()
            .find_map(|l| l.strip_prefix("lbd_runtime_tasks "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no lbd_runtime_tasks in /metrics"))
    }

    /// Connections open through every frontend, from the status API.
    pub fn active_connections(&self) -> u64 {
        self.status()["frontends"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["active_connections"].as_u64().unwrap())
            .sum()
    }

    /// Waits until no connection is open and the descriptor and task counts
    /// hold still for a while (health checks open a socket now and then),
    /// then reads the footprint.
    pub fn settled(&self) -> Footprint {
        wait_until(Duration::from_secs(30), "every connection to close", || {
            self.active_connections() == 0
        });
        let mut last = None;
        let mut steady = 0;
        let mut footprint = None;
        wait_until(Duration::from_secs(30), "fds and tasks to settle", || {
            let stats = self.stats();
            let now = (stats.fds, self.runtime_tasks());
            steady = if last == Some(now) { steady + 1 } else { 0 };
            last = Some(now);
            footprint = Some(Footprint {
                fds: now.0,
                rss_kib: stats.rss_kib,
                tasks: now.1,
            });
            steady >= 5
        });
        footprint.unwrap()
    }
}
