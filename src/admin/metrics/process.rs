//! The process's own resource use, read from /proc at scrape time (a stat
//! and two small files): open and maximum file descriptors, resident
//! memory, CPU time. Every read is bounded: nothing here walks a list as
//! long as the open-files limit on the runtime thread that renders a scrape.
//! And the runtime's live tasks, which leak checks compare before and after
//! a soak.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Unit;

use super::{single_counter, single_gauge};

/// Encodes `process_*` metrics; each one the system cannot tell is left out.
pub(super) fn encode(out: &mut DescriptorEncoder) -> fmt::Result {
    if let Some(open) = open_fds() {
        single_gauge(
            out,
            "process_open_fds",
            "Open file descriptors.",
            None,
            open,
        )?;
    }
    if let Some(max) = max_fds() {
        single_gauge(
            out,
            "process_max_fds",
            "The limit on open file descriptors (RLIMIT_NOFILE).",
            None,
            max,
        )?;
    }
    if let Some(rss) = resident_bytes() {
        single_gauge(
            out,
            "process_resident_memory",
            "Resident memory size in bytes.",
            Some(&Unit::Bytes),
            rss,
        )?;
    }
    if tokio::runtime::Handle::try_current().is_ok() {
        // Every runtime: with one per core, connections live on all of them.
        let tasks: usize = crate::proxy::runtime::handles()
            .iter()
            .map(|runtime| runtime.metrics().num_alive_tasks())
            .sum();
        single_gauge(
            out,
            "lbd_runtime_tasks",
            "Tasks alive in the async runtimes: connections, checks, listeners, admin.",
            None,
            tasks as u64,
        )?;
    }
    if let Some(cpu) = cpu_seconds() {
        single_counter(
            out,
            "process_cpu",
            "User and system CPU time spent in seconds.",
            Some(&Unit::Seconds),
            cpu,
        )?;
    }
    Ok(())
}
fn open_fds() -> Option<u64> {
    // Since Linux 6.2 the size of /proc/self/fd is the number of open
    // descriptors: one stat, however many there are.
    match std::fs::metadata("/proc/self/fd") {
        Ok(meta) if meta.len() > 0 => Some(meta.len()),
        _ => counted_open_fds(),
    }
}

/// Older kernels report no size: the descriptors must be listed, one entry
/// each, up to the open-files limit (lbd raises it to 262 144). That walk
/// runs on the blocking pool, one at a time, and a scrape shows the latest
/// count (from the scrape before, at worst). Outside a runtime it runs here.
fn counted_open_fds() -> Option<u64> {
    const NEVER: u64 = u64::MAX;
    static LAST: AtomicU64 = AtomicU64::new(NEVER);
    static COUNTING: AtomicBool = AtomicBool::new(false);
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return list_open_fds();
    };
    if !COUNTING.swap(true, Ordering::AcqRel) {
        runtime.spawn_blocking(|| {
            if let Some(count) = list_open_fds() {
                LAST.store(count, Ordering::Relaxed);
            }
            COUNTING.store(false, Ordering::Release);
        });
    }
    Some(LAST.load(Ordering::Relaxed)).filter(|&count| count != NEVER)
}

fn list_open_fds() -> Option<u64> {
    let entries = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
    // The listing's own descriptor is one of them.
    Some(entries.saturating_sub(1))
}

fn max_fds() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own and pass by pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (rc == 0).then_some(limit.rlim_cur)
}

fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces and ends with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (ticks > 0).then(|| (utime + stime) as f64 / ticks as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_descriptors_off_the_runtime_thread_on_old_kernels() {
        assert!(list_open_fds().unwrap() >= 3);
        // The first scrape starts a count on the blocking pool; a later one shows it.
        let mut counted = None;
        for _ in 0..500 {
            counted = counted_open_fds();
            if counted.is_some() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(counted.is_some_and(|n| n >= 3), "{counted:?}");
    }

    #[test]
    fn reads_this_process() {
        assert!(open_fds().unwrap() >= 3);
        assert!(max_fds().unwrap() >= open_fds().unwrap());
        assert!(resident_bytes().unwrap() > 1024 * 1024);
        assert!(cpu_seconds().unwrap() >= 0.0);
    }
}
