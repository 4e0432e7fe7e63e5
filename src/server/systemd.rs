//! The two systemd conventions the daemon speaks, without a crate: `sd_notify` (a datagram to `$NOTIFY_SOCKET`)
//! and socket activation (`$LISTEN_PID`/`$LISTEN_FDS`, the listener at fd 3). Everything platform-specific about
//! service managers lives here. On Windows there is no `$NOTIFY_SOCKET` and no socket activation: `notify` does
//! nothing, and the Service Control Manager is spoken to by `sc.exe` (README, Windows).

use std::io;
#[cfg(unix)]
use std::os::fd::{FromRawFd, RawFd};
#[cfg(unix)]
use std::os::unix::net::{UnixDatagram, UnixListener};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
#[cfg(unix)]
pub const LISTEN_FDS_START: RawFd = 3;

/// No service manager listens for notifications on Windows; returns `false` (nothing sent).
#[cfg(not(unix))]
pub fn notify(_state: &str) -> io::Result<bool> {
    Ok(false)
}

/// Sends `state` (e.g. `"READY=1"`) to the service manager when `$NOTIFY_SOCKET` is set. Returns whether it was.
/// A leading `@` in the address names a Linux abstract socket.
#[cfg(unix)]
pub fn notify(state: &str) -> io::Result<bool> {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return Ok(false);
    };
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    match bytes.first() {
        #[cfg(target_os = "linux")]
        Some(b'@') => {
            use std::os::linux::net::SocketAddrExt;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(&bytes[1..])?;
            socket.send_to_addr(state.as_bytes(), &addr)?;
        }
        Some(b'/') => {
            socket.send_to(state.as_bytes(), &path)?;
        }
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("NOTIFY_SOCKET {path:?} is neither an absolute path nor an abstract address"),
            ))
        }
    }
    Ok(true)
}

/// The `STATUS=` text of a serving daemon: whether its store takes writes, and why not.
pub fn serving_status(write: &crate::store::WriteStatus) -> String {
    match write {
        crate::store::WriteStatus::Writable => "STATUS=serving; store writable".to_string(),
        crate::store::WriteStatus::Unwritable { reason } => {
            // One line: the status is a single line of text.
            format!("STATUS=serving; store NOT writable: {}", reason.replace('\n', " "))
        }
    }
}

/// Takes the listening socket systemd passed (socket activation), if `$LISTEN_PID` names this process and
/// `$LISTEN_FDS` ≥ 1. Unsets both variables so children do not inherit them. Call it early, before other threads
/// exist (it edits the environment).
#[cfg(unix)]
pub fn take_activated_listener() -> io::Result<Option<UnixListener>> {
    let pid = std::env::var("LISTEN_PID").ok().and_then(|p| p.parse::<u32>().ok());
    let fds = std::env::var("LISTEN_FDS").ok().and_then(|n| n.parse::<i32>().ok());
    std::env::remove_var("LISTEN_PID");
    std::env::remove_var("LISTEN_FDS");
    std::env::remove_var("LISTEN_FDNAMES");
    if pid != Some(std::process::id()) {
        return Ok(None);
    }
    let n = match fds {
        Some(n) if n >= 1 => n,
        _ => return Ok(None),
    };
    if n > 1 {
        tracing::warn!("socket activation passed {n} descriptors; serving the first and ignoring the rest");
    }
    let fd = LISTEN_FDS_START;
    // SAFETY: fcntl/getsockopt on a descriptor number only inspect it; we take ownership below only after checking
    // that it is a listening Unix stream socket.
    unsafe {
        if libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut value: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        ) < 0
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket activation: fd {fd} is not a socket: {}", io::Error::last_os_error()),
            ));
        }
        if value == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket activation: fd {fd} is not a listening socket (use ListenStream= and Accept=no)"),
            ));
        }
        let mut domain: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        if libc::getsockopt(fd, libc::SOL_SOCKET, libc::SO_DOMAIN, (&mut domain as *mut libc::c_int).cast(), &mut len)
            == 0
            && domain != libc::AF_UNIX
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("socket activation: fd {fd} is not a Unix socket (ListenStream= must be a path)"),
            ));
        }
        Ok(Some(UnixListener::from_raw_fd(fd)))
    }
}
