//! The descriptor budget: the daemon raises its soft `RLIMIT_NOFILE` to the hard limit at start, then splits what it
//! has between connections and batch I/O ([`crate::limits`]: `FDS_*`). When the limit cannot hold the configured
//! connection limit beside reads and writes, the connection limit is lowered (logged at warn), so an excess client
//! gets `busy` instead of the store meeting `EMFILE`.

use std::io;

use crate::limits::{FDS_CONNECTION_SHARE_WHEN_SHORT, FDS_READS_MAX, FDS_RESERVED, FDS_WRITES_MAX};

/// The process's descriptor limit before and after [`raise_nofile_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimit {
    pub before: u64,
    pub soft: u64,
    pub hard: u64,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (a shell's usual 1,024 is far below what batch reads and a
/// thousand connections need).
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // `rlim_t` is `u64` here but not on every target.
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct we own; raising the soft limit up to the hard one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        limit = raised;
    }
    Ok(NofileLimit { before: before as u64, soft: limit.rlim_cur as u64, hard: limit.rlim_max as u64 })
}

/// Windows has no per-process descriptor limit to raise (handles are bounded by memory, about 16 million): reports
/// an unlimited one.
#[cfg(windows)]
pub fn raise_nofile_limit() -> io::Result<NofileLimit> {
    Ok(NofileLimit { before: u64::MAX, soft: u64::MAX, hard: u64::MAX })
}

/// The current soft descriptor limit (Windows: unlimited, see [`raise_nofile_limit`]).
#[cfg(windows)]
pub fn nofile_soft_limit() -> u64 {
    u64::MAX
}

/// The current soft descriptor limit.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // `rlim_t` is `u64` here but not on every target.
pub fn nofile_soft_limit() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return u64::MAX;
    }
    limit.rlim_cur as u64
}

/// How many connections fit a descriptor limit of `limit` when `wanted` are configured, and, when they do not
/// fit, the warning that says what the daemon does instead.
pub fn plan_connections(limit: u64, wanted: usize) -> (usize, Option<String>) {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let io = FDS_RESERVED + FDS_READS_MAX + FDS_WRITES_MAX;
    if limit.saturating_sub(io) >= wanted {
        return (wanted, None);
    }
    let fit = if limit > io + wanted.min(FDS_CONNECTION_SHARE_WHEN_SHORT) {
        limit - io
    } else {
        // Not even batch I/O fits: connections take a share, reads and writes the rest (they may then meet EMFILE,
        // which fails the request, not the store).
        (limit.saturating_sub(FDS_RESERVED) / FDS_CONNECTION_SHARE_WHEN_SHORT).max(1)
    };
    let fit = fit.min(wanted);
    let warning = format!(
        "the descriptor limit ({limit}) cannot hold {wanted} connections beside {FDS_RESERVED} reserved, \
         {FDS_READS_MAX} for reads and {FDS_WRITES_MAX} for writes: serving at most {fit} connections (raise the hard \
         limit, e.g. LimitNOFILE= or `ulimit -Hn`, to serve more)"
    );
    (fit, Some(warning))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_fit_the_descriptor_limit() {
        let io = (FDS_RESERVED + FDS_READS_MAX + FDS_WRITES_MAX) as u64;
        assert_eq!(plan_connections(1 << 20, 1024), (1024, None));
        assert_eq!(plan_connections(io + 1024, 1024), (1024, None));
        let (fit, warning) = plan_connections(io + 100, 1024);
        assert_eq!(fit, 100);
        assert!(warning.unwrap().contains("at most 100 connections"));
        let (fit, warning) = plan_connections(1024, 1024);
        assert_eq!(fit, (1024 - FDS_RESERVED) / FDS_CONNECTION_SHARE_WHEN_SHORT);
        assert!(warning.is_some());
        assert_eq!(plan_connections(10, 1024).0, 1);
    }
}
