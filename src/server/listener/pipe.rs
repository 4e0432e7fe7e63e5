//! Windows: a named pipe (`\\.\pipe\NAME`). The first instance is created with `FILE_FLAG_FIRST_PIPE_INSTANCE`, so a
//! second daemon on the same name is refused; each accepted client takes the waiting instance and a fresh one is
//! created for the next. Remote clients are rejected (tokio's default). The pipe's security is Windows' default for
//! named pipes: full access for LocalSystem, Administrators and the creating account, read-only for others, so a
//! client must run as the daemon's account or an administrator (`socket_mode` does not apply).

use std::ffi::OsString;
use std::io;
use std::path::Path;

use tokio::net::windows::named_pipe::{NamedPipeServer, ServerOptions};

use super::super::connection::{BoxedRead, BoxedWrite, ServedStream};
use super::ServerError;

/// `ERROR_ACCESS_DENIED`: another process owns the first instance of the pipe.
const ERROR_ACCESS_DENIED: i32 = 5;
/// `ERROR_PIPE_BUSY`: the pipe exists and all its instances are connected.
const ERROR_PIPE_BUSY: i32 = 231;

/// The pipe name the server will listen on. Pipes exist only while their server does, so nothing is bound
/// before [`Listener::serve`] (named pipes need the runtime).
pub struct Listener {
    name: OsString,
}

impl Listener {
    /// Checks that no server answers on `name`; the pipe is created by [`Listener::serve`]. `mode` does not apply.
    pub fn bind(name: &Path, _mode: u32) -> Result<Listener, ServerError> {
        remove_stale_socket(name)?;
        Ok(Listener { name: name.as_os_str().to_owned() })
    }

    /// No service manager passes pipes.
    pub fn activated() -> io::Result<Option<Listener>> {
        Ok(None)
    }

    /// Creates the pipe's first instance (call it inside the runtime); refused when another server owns the name.
    pub(in crate::server) fn serve(self) -> Result<Serving, ServerError> {
        let first = ServerOptions::new().first_pipe_instance(true).create(&self.name).map_err(|e| {
            if e.raw_os_error() == Some(ERROR_ACCESS_DENIED) {
                ServerError::SocketInUse(self.name.clone().into())
            } else {
                ServerError::Socket { path: self.name.clone().into(), source: e }
            }
        })?;
        Ok(Serving { name: self.name, waiting: first })
    }
}

/// A named pipe has no file to go stale; this only refuses a name a live server answers on (by connecting to it).
pub fn remove_stale_socket(name: &Path) -> Result<(), ServerError> {
    match std::fs::OpenOptions::new().read(true).write(true).open(name) {
        Ok(_) => Err(ServerError::SocketInUse(name.to_path_buf())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) => Err(ServerError::SocketInUse(name.to_path_buf())),
        Err(e) => Err(ServerError::Socket { path: name.to_path_buf(), source: e }),
    }
}

/// The pipe while serving: one instance waits for the next client.
pub(in crate::server) struct Serving {
    name: OsString,
    waiting: NamedPipeServer,
}

impl Serving {
    pub(in crate::server) async fn accept(&mut self) -> io::Result<NamedPipeServer> {
        let connected = self.waiting.connect().await;
        // A fresh instance for the next client, whether or not this one connected (a failed instance is dropped).
        let fresh = ServerOptions::new().create(&self.name)?;
        let instance = std::mem::replace(&mut self.waiting, fresh);
        connected.map(|()| instance)
    }

    pub(in crate::server) fn describe(&self) -> String {
        format!("pipe {}", self.name.to_string_lossy())
    }

    /// Stops accepting: the pipe disappears with its last instance.
    pub(in crate::server) fn close(self) {}
}

impl ServedStream for NamedPipeServer {
    fn try_write_now(&self, bytes: &[u8]) -> io::Result<usize> {
        self.try_write(bytes)
    }

    fn into_halves(self) -> (BoxedRead, BoxedWrite) {
        let (reader, writer) = tokio::io::split(self);
        (Box::new(reader), Box::new(writer))
    }
}
