//! Scheduling priority of background threads: the work that follows the commit path (the live mirror, its
//! checkpoints, index checkpoints) asks the kernel to let the commit path go first, for the CPU and for the disk.
//!
//! - CPU: a nice value above the default (`setpriority(PRIO_PROCESS, tid)`, which is per thread on Linux): under
//!   contention the scheduler gives such a thread a smaller share and lets a waking default-priority thread (the
//!   writer after its `fdatasync`, a connection task) preempt it sooner. Not `SCHED_IDLE`: a mirror that gets no CPU
//!   while anything else runs would hold appends at the lag bound on a busy host.
//! - I/O: an I/O priority class (`ioprio_set(IOPRIO_WHO_PROCESS, tid)`), honoured by the `mq-deadline` and `bfq`
//!   schedulers for the requests the thread itself submits (its `write`s and `sync_file_range` writeback; not the
//!   kernel flusher's work a `syncfs` waits for).
//!
//! Lowering one's own priority needs no privilege. Where it fails (a seccomp filter, a kernel without the call) the
//! thread runs at the default priority, with a `debug` line; elsewhere than Linux this does nothing.

/// An I/O scheduling class and level, as `ioprio_set(2)` takes them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoPriority {
    /// Best effort at `level` (0 highest .. 7 lowest); the default class is best effort at 4.
    BestEffort(u8),
    /// Served only when no other class has requests queued (with the scheduler's aging against starvation).
    Idle,
}

/// The priority a background thread asks for: a nice value (0 = default .. 19 = lowest) and an I/O priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Background {
    pub nice: i32,
    pub io: IoPriority,
}

/// What [`lower_current_thread`] achieved: each part set, or not (unsupported or refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Applied {
    pub nice: bool,
    pub io: bool,
}

#[cfg(target_os = "linux")]
const IOPRIO_CLASS_SHIFT: u32 = 13;
#[cfg(target_os = "linux")]
const IOPRIO_CLASS_BE: u32 = 2;
#[cfg(target_os = "linux")]
const IOPRIO_CLASS_IDLE: u32 = 3;
#[cfg(target_os = "linux")]
const IOPRIO_WHO_PROCESS: libc::c_int = 1;

impl IoPriority {
    /// The `ioprio` value of `ioprio_set(2)`: class << 13 | level.
    #[cfg(target_os = "linux")]
    fn value(self) -> libc::c_int {
        let (class, level) = match self {
            IoPriority::BestEffort(level) => (IOPRIO_CLASS_BE, u32::from(level.min(7))),
            IoPriority::Idle => (IOPRIO_CLASS_IDLE, 0),
        };
        ((class << IOPRIO_CLASS_SHIFT) | level) as libc::c_int
    }
}

/// Lowers the calling thread's CPU and I/O priority to `to` (never raises it: a nice value below the thread's
/// current one is left alone, as a process started with `nice` already runs lower). Call at the start of a
/// background thread; threads it spawns inherit both.
pub fn lower_current_thread(to: Background) -> Applied {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` has no preconditions and touches no memory.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        let mut applied = Applied::default();
        // `getpriority` returns -1 both as a value and for an error: clear errno first to tell them apart.
        // SAFETY: errno is thread-local; `getpriority` touches no memory of ours.
        let current = unsafe {
            *libc::__errno_location() = 0;
            libc::getpriority(libc::PRIO_PROCESS, tid)
        };
        let nice = to.nice.clamp(0, 19);
        if current >= nice {
            applied.nice = true;
        } else {
            // SAFETY: plain syscall on our own thread id; touches no memory.
            match unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } {
                0 => applied.nice = true,
                _ => tracing::debug!(
                    nice,
                    "could not lower this thread's CPU priority: {}",
                    std::io::Error::last_os_error()
                ),
            }
        }
        // SAFETY: `ioprio_set` takes three integers and touches no memory.
        match unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, tid, to.io.value()) } {
            0 => applied.io = true,
            _ => {
                tracing::debug!(io = ?to.io, "could not lower this thread's I/O priority: {}", std::io::Error::last_os_error())
            }
        }
        applied
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = to;
        Applied::default()
    }
}

/// The calling thread's nice value and I/O priority as the kernel reports them (`None` where unknown or not Linux):
/// for tests and diagnostics.
pub fn current_thread() -> Option<(i32, Option<IoPriority>)> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as in `lower_current_thread`.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        // SAFETY: errno is thread-local; `getpriority` touches no memory of ours.
        let nice = unsafe {
            *libc::__errno_location() = 0;
            let nice = libc::getpriority(libc::PRIO_PROCESS, tid);
            if nice == -1 && *libc::__errno_location() != 0 {
                return None;
            }
            nice
        };
        // SAFETY: `ioprio_get` takes two integers and touches no memory.
        let value = unsafe { libc::syscall(libc::SYS_ioprio_get, IOPRIO_WHO_PROCESS, tid) };
        let io = match (value as u32) >> IOPRIO_CLASS_SHIFT {
            _ if value < 0 => None,
            IOPRIO_CLASS_IDLE => Some(IoPriority::Idle),
            IOPRIO_CLASS_BE => Some(IoPriority::BestEffort((value & 7) as u8)),
            // No class set: best effort, its level derived from the nice value (the kernel's default).
            0 => Some(IoPriority::BestEffort(((nice + 20) / 5).clamp(0, 7) as u8)),
            _ => None,
        };
        Some((nice, io))
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nice value of the calling thread as `/proc` shows it (field 19 of its `stat`), not through the call the
    /// code under test uses.
    #[cfg(target_os = "linux")]
    fn proc_nice() -> i32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let after_name = &stat[stat.rfind(')').unwrap() + 2..];
        after_name.split(' ').nth(16).unwrap().parse().unwrap()
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn a_lowered_thread_runs_at_the_nice_value_and_io_class_asked_for_and_its_threads_inherit_both() {
        let spawner_before = (proc_nice(), current_thread());
        let (nice, io, child) = std::thread::spawn(|| {
            let base = proc_nice();
            let applied = lower_current_thread(Background { nice: base.max(10), io: IoPriority::Idle });
            assert_eq!(applied, Applied { nice: true, io: true });
            let child = std::thread::spawn(|| (proc_nice(), current_thread())).join().unwrap();
            (proc_nice(), current_thread(), child)
        })
        .join()
        .unwrap();
        assert!(nice >= 10, "nice {nice}");
        assert_eq!(io, Some((nice, Some(IoPriority::Idle))));
        assert_eq!(child, (nice, Some((nice, Some(IoPriority::Idle)))), "a thread it spawns inherits both");
        assert_eq!((proc_nice(), current_thread()), spawner_before, "only the calling thread is lowered");
        // A best-effort level is kept as asked.
        let io = std::thread::spawn(|| {
            lower_current_thread(Background { nice: 0, io: IoPriority::BestEffort(7) });
            current_thread().unwrap().1
        })
        .join()
        .unwrap();
        assert_eq!(io, Some(IoPriority::BestEffort(7)));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn lowering_never_raises_a_thread_that_runs_lower_already() {
        let nice = std::thread::spawn(|| {
            lower_current_thread(Background { nice: 15, io: IoPriority::BestEffort(4) });
            assert!(proc_nice() >= 15);
            let applied = lower_current_thread(Background { nice: 5, io: IoPriority::BestEffort(4) });
            assert!(applied.nice, "already at or below what was asked: nothing to do");
            proc_nice()
        })
        .join()
        .unwrap();
        assert!(nice >= 15, "nice {nice}");
    }

    #[cfg(not(target_os = "linux"))]
    #[test]
    fn elsewhere_than_linux_nothing_is_changed_or_reported() {
        assert_eq!(lower_current_thread(Background { nice: 10, io: IoPriority::Idle }), Applied::default());
        assert_eq!(current_thread(), None);
    }
}
