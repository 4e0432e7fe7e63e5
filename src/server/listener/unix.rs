//! Unix: a socket file the server binds (and removes at exit if still its own) or one systemd passed.

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::super::connection::{BoxedRead, BoxedWrite, ServedStream};
use super::ServerError;

fn socket_err(path: &Path) -> impl FnOnce(io::Error) -> ServerError + '_ {
    move |source| ServerError::Socket { path: path.to_path_buf(), source }
}

/// A socket file this server bound: its path and (device, inode), to remove it at exit only if it is still ours.
type BoundSocket = (PathBuf, (u64, u64));

/// Where the server listens.
pub enum Listener {
    /// A socket file this server bound; removed at exit if it is still the same file.
    Bound { listener: std::os::unix::net::UnixListener, path: PathBuf, dev_ino: (u64, u64) },
    /// A socket systemd passed (socket activation); systemd owns the file.
    Activated(std::os::unix::net::UnixListener),
}

impl Listener {
    /// Binds `path` with `mode` permissions, after removing a stale socket file there (one nothing listens on).
    /// Refuses if a server answers on `path` or if `path` is not a socket.
    pub fn bind(path: &Path, mode: u32) -> Result<Listener, ServerError> {
        remove_stale_socket(path)?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(socket_err(path))?;
        }
        // The socket is created with 0777 & !umask: narrow the umask around bind so it never exists with wider
        // permissions than asked, then set the mode exactly.
        // SAFETY: umask only swaps the process's file-creation mask.
        let old = unsafe { libc::umask(!(mode as libc::mode_t) & 0o777) };
        let bound = std::os::unix::net::UnixListener::bind(path);
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        let listener = bound.map_err(socket_err(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(socket_err(path))?;
        let meta = std::fs::symlink_metadata(path).map_err(socket_err(path))?;
        Ok(Listener::Bound { listener, path: path.to_path_buf(), dev_ino: (meta.dev(), meta.ino()) })
    }

    /// The listening socket systemd passed (socket activation), if any ([`super::super::systemd`]).
    pub fn activated() -> io::Result<Option<Listener>> {
        Ok(super::super::systemd::take_activated_listener()?.map(Listener::Activated))
    }

    /// Registers the socket with the runtime (call it inside one).
    pub(in crate::server) fn serve(self) -> Result<Serving, ServerError> {
        let (listener, bound) = match self {
            Listener::Bound { listener, path, dev_ino } => (listener, Some((path, dev_ino))),
            Listener::Activated(listener) => (listener, None),
        };
        listener.set_nonblocking(true)?;
        Ok(Serving { listener: tokio::net::UnixListener::from_std(listener)?, bound })
    }
}

/// A listener registered with the runtime.
pub(in crate::server) struct Serving {
    listener: tokio::net::UnixListener,
    bound: Option<BoundSocket>,
}

impl Serving {
    pub(in crate::server) async fn accept(&mut self) -> io::Result<tokio::net::UnixStream> {
        Ok(self.listener.accept().await?.0)
    }

    /// What it listens on, for the log.
    pub(in crate::server) fn describe(&self) -> String {
        match &self.bound {
            Some((path, _)) => format!("socket {}", path.display()),
            None => "the socket systemd passed".to_string(),
        }
    }

    /// Stops accepting: the socket file disappears (if it is still ours).
    pub(in crate::server) fn close(self) {
        drop(self.listener);
        if let Some((path, dev_ino)) = &self.bound {
            remove_socket_if_ours(path, *dev_ino);
        }
    }
}

impl ServedStream for tokio::net::UnixStream {
    fn try_write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        self.try_write(bytes)
    }

    fn into_halves(self) -> (BoxedRead, BoxedWrite) {
        let (reader, writer) = self.into_split();
        (Box::new(reader), Box::new(writer))
    }
}

/// Removes `path` if it is a socket file nobody listens on. Leaves a live socket (error) and non-sockets (error).
pub fn remove_stale_socket(path: &Path) -> Result<(), ServerError> {
    let meta = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(socket_err(path)(e)),
        Ok(meta) => meta,
    };
    if !meta.file_type().is_socket() {
        return Err(ServerError::NotASocket(path.to_path_buf()));
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ServerError::SocketInUse(path.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            tracing::info!(socket = %path.display(), "removing stale socket file");
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(socket_err(path)(e)),
                _ => Ok(()),
            }
        }
        Err(e) => Err(socket_err(path)(e)),
    }
}

fn remove_socket_if_ours(path: &Path, dev_ino: (u64, u64)) {
    match std::fs::symlink_metadata(path) {
        Ok(meta) if (meta.dev(), meta.ino()) == dev_ino => {
            if let Err(e) = std::fs::remove_file(path) {
                tracing::warn!(socket = %path.display(), "removing the socket file: {e}");
            }
        }
        _ => {}
    }
}
