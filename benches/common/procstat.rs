//! CPU time and memory of processes, read from `/proc`: what a bench reports beside its
//! throughput, so a ratio can be traced to the process that paid for it.

use std::path::Path;

/// CPU time (user + system) process `pid` has used, in seconds: its live threads' and the
/// threads' that have exited.
///
/// `/proc/PID/task/*/schedstat` counts nanoseconds where `/proc/PID/stat` counts 10 ms ticks: a
/// load client spends a few milliseconds per round, which ticks cannot resolve. But schedstat
/// exists only for live threads, and a process's threads come and go (tokio's
/// `block_in_place`, which `readtrack serve` commits in, hands the worker to another thread,
/// and idle blocking threads exit): what exited threads used is the process's ticks less its
/// live threads' ticks, added at tick resolution. Falls back to the ticks where the kernel keeps
/// no schedstat.
pub fn cpu_s(pid: u32) -> f64 {
    let mut ns = 0u64;
    let mut live_ticks = 0u64;
    let mut threads = 0;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            let Some(run) = text
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
            else {
                continue;
            };
            // A thread that exits between the two reads counts neither here nor below.
            let Some(ticks) = stat_ticks(&task.path().join("stat")) else {
                continue;
            };
            ns += run;
            live_ticks += ticks;
            threads += 1;
        }
    }
    let process_ticks = stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0);
    if threads > 0 {
        let exited_ticks = process_ticks.saturating_sub(live_ticks);
        ns as f64 / 1e9 + exited_ticks as f64 / USER_HZ
    } else {
        process_ticks as f64 / USER_HZ
    }
}

const USER_HZ: f64 = 100.0;

/// Seconds process `pid`'s live threads have waited on a run queue, runnable but not running
/// (`/proc/PID/task/*/schedstat`'s second field): on a machine shared with other work, the part
/// of a process's idle time that was the machine's, not its own waiting. Threads that have
/// exited are not counted (Prosody is one thread).
pub fn runqueue_wait_s(pid: u32) -> f64 {
    let mut ns = 0u64;
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) else {
                continue;
            };
            ns += text
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// utime + stime of a `/proc/.../stat` file, in ticks (`USER_HZ`). For a process it includes
/// the threads that have exited.
fn stat_ticks(path: &Path) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// CPU time from `/proc/PID/stat` (utime + stime), in seconds, at 10 ms resolution.
pub fn cpu_ticks_s(pid: u32) -> f64 {
    stat_ticks(Path::new(&format!("/proc/{pid}/stat"))).unwrap_or(0) as f64 / USER_HZ
}

/// CPU time this process has used, in seconds (every thread; the clock the kernel keeps for
/// the process, to the nanosecond).
pub fn self_cpu_s() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// The pid of the Prosody process started with `config` (not its `runuser` parent).
pub fn prosody_pid(config: &Path) -> u32 {
    let config = config.display().to_string();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains(&config) && !cmd.starts_with("runuser") {
            return pid;
        }
    }
    panic!("no prosody process for {config}");
}

/// Resident and peak resident memory of `pid`, in KiB (`VmRSS`, `VmHWM`).
pub fn rss_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |f: &str| {
        status
            .lines()
            .find(|l| l.starts_with(f))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}
