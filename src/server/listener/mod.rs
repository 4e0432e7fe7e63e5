//! Where the server listens, one module per platform with the same shape: [`Listener`] (`bind`, `activated`,
//! `serve`), [`remove_stale_socket`], and `Serving` (`accept`, `describe`, `close`) whose streams implement
//! [`super::connection::ServedStream`], so the connection code is shared.
//!
//! - Unix (`unix`): a Unix stream socket file, or the socket systemd passed.
//! - Windows (`pipe`): a named pipe (`\\.\pipe\NAME`, default `\\.\pipe\opossumd`) through tokio's named pipes;
//!   the same JSON Lines protocol.

use std::io;
use std::path::PathBuf;

#[cfg(windows)]
mod pipe;
#[cfg(unix)]
mod unix;

#[cfg(windows)]
pub use pipe::{remove_stale_socket, Listener};
#[cfg(unix)]
pub use unix::{remove_stale_socket, Listener};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("socket {0} is in use by a running server")]
    SocketInUse(PathBuf),
    #[error("{0} exists and is not a socket; refusing to replace it")]
    NotASocket(PathBuf),
    #[error("socket {path}: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The graceful stop could not flush or close the store: what was acknowledged is durable, but deferred index
    /// files or the projection store may need the next start's recovery.
    #[error("stopping: {0}")]
    Stop(String),
}
