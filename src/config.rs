//! Daemon configuration: a TOML file and command-line flags parsed into plain data ([`ConfigFile`],
//! [`DaemonArgs`]), merged (flags win over the file, the file over defaults) and validated into a [`Config`].
//!
//! ```toml
//! # /etc/opossum/opossumd.toml — every key is optional
//! data = "/var/lib/opossum"          # the store directory itself (.ledger, events/, Indices/, Projections/)
//! socket = "/run/opossum/opossumd.sock"
//! socket_mode = "0660"               # octal; applied to the socket file the daemon binds
//! io_backend = "auto"                # auto | uring | threads
//! durability = "fsync"               # fsync | none
//! commit = "journal"                 # journal | files: which copy is durable before the answer
//! mirror = "live"                    # live | off: journal mode keeps the Opossum tree as a mirror, or not
//! sync_strategy = "auto"             # auto | per-file | syncfs (auto: syncfs while little else is dirty)
//! index_writes = "every-commit"      # every-commit | deferred; files mode only (the mirror writes journal mode's)
//! index_flush_interval_ms = 1000     # with deferred index writes
//! max_connections = 1024             # excess connections get a `busy` line and are closed
//! max_frame_bytes = 16777216         # longest request line
//! line_timeout_ms = 30000            # a started request line must arrive within this; else the connection closes
//! umask = "0027"                     # octal; the file-creation mask the daemon sets at start (the unit's UMask=)
//! shutdown_timeout_ms = 30000        # SIGTERM: how long in-flight requests may take to finish
//! projection_cache_bytes = 134217728 # hot tier of projection reads; 0 turns it off (Linux default 128 MiB, else 0)
//! log = "info"                       # tracing filter (RUST_LOG syntax); RUST_LOG overrides it
//! ```
//!
//! SIGHUP re-reads the file and applies `log` and `max_connections`; other keys need a restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::io::{IoBackendKind, SyncStrategy};
use crate::store::{CommitMode, Durability, IndexWrites, MirrorMode};

pub const DATA_DEFAULT: &str = "./opossum-data";
/// Where the daemon listens: a Unix socket path; on Windows a named pipe (`\\.\pipe\NAME`).
#[cfg(unix)]
pub const SOCKET_DEFAULT: &str = "./opossum.sock";
/// Where the daemon listens: a Unix socket path; on Windows a named pipe (`\\.\pipe\NAME`).
#[cfg(windows)]
pub const SOCKET_DEFAULT: &str = r"\\.\pipe\opossumd";
pub const SOCKET_MODE_DEFAULT: u32 = 0o660;
/// Connections served at once; further ones get a `busy` error line and are closed.
pub const MAX_CONNECTIONS_DEFAULT: usize = crate::limits::CONNECTIONS_DEFAULT;
pub const SHUTDOWN_TIMEOUT_DEFAULT: Duration = Duration::from_secs(30);
pub const INDEX_FLUSH_INTERVAL_DEFAULT: Duration = Duration::from_secs(1);
pub const LOG_DEFAULT: &str = "info";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {source}")]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid {key}: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, message: message.into() }
}

/// The config file as written: every key optional, unknown keys refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub data: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub socket_mode: Option<String>,
    pub io_backend: Option<String>,
    pub durability: Option<String>,
    pub commit: Option<String>,
    pub mirror: Option<String>,
    pub sync_strategy: Option<String>,
    pub index_writes: Option<String>,
    pub index_flush_interval_ms: Option<u64>,
    pub max_connections: Option<usize>,
    pub max_frame_bytes: Option<usize>,
    pub line_timeout_ms: Option<u64>,
    pub umask: Option<String>,
    pub shutdown_timeout_ms: Option<u64>,
    pub projection_cache_bytes: Option<usize>,
    pub log: Option<String>,
}

impl ConfigFile {
    pub fn parse(text: &str, path: &Path) -> Result<ConfigFile, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_path_buf(), source: Box::new(e) })
    }

    pub fn load(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read { path: path.to_path_buf(), source: e })?;
        ConfigFile::parse(&text, path)
    }
}

/// `opossumd` command-line flags. Every flag overrides the config file's key of the same name.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Parser)]
#[command(name = "opossumd", version, about = "opossum storage daemon: a DCB event store served over a Unix socket")]
pub struct DaemonArgs {
    /// The store directory itself (holds .ledger, events/, Indices/, Projections/); created if absent
    /// [default: ./opossum-data]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Unix socket path to listen on (ignored under socket activation) [default: ./opossum.sock]
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// TOML config file; flags override its keys
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Permissions of the socket file, octal [default: 0660]
    #[arg(long, value_name = "MODE")]
    pub socket_mode: Option<String>,
    /// auto | uring | threads [default: auto]
    #[arg(long, value_name = "BACKEND")]
    pub io_backend: Option<String>,
    /// fsync | none [default: fsync]. none: nothing synced while the store runs; a machine crash may lose
    /// acknowledged events, never answers wrongly or shows part of a batch (a clean stop syncs once; the open after
    /// an unclean one checks the tree, re-deriving the index from every event file, and sets aside what is lost)
    #[arg(long)]
    pub durability: Option<String>,
    /// journal | files [default: journal]. journal: one write + one fdatasync of .opossumd/journal per group
    /// commit; the daemon holds .store.lock until it stops (.NET writers wait). files: event files, ledger (and with
    /// every-commit index writes, index files: O(index size) per commit) durable before the answer, as .NET Opossum
    /// does; for stores .NET processes append to while the daemon runs. A files open first repairs the tree from the
    /// journal when a journal run left it behind (a crash, or --mirror off)
    #[arg(long, value_name = "MODE")]
    pub commit: Option<String>,
    /// live | off [default: live], journal mode only. live: a mirror thread writes the Opossum tree (event files,
    /// ledger; index files at checkpoints) from the journal without fsyncs, makes it durable every 10,000 events or
    /// 2 s and at a clean stop, and appends wait while it lags 10,000 events or what it writes in 1 s (re-derived
    /// from the last checkpoint after a crash); off: no tree for new events
    #[arg(long, value_name = "MODE")]
    pub mirror: Option<String>,
    /// auto | per-file | syncfs [default: auto]: one syncfs per barrier while the system has little other dirty data,
    /// else an fsync per file; syncfs always only for a store on a filesystem of its own
    #[arg(long, value_name = "HOW")]
    pub sync_strategy: Option<String>,
    /// every-commit | deferred [default: every-commit], files mode only (journal mode's mirror writes index files at
    /// its checkpoints). every-commit: O(index file size) per commit, as .NET Opossum; deferred: flushed every
    /// --index-flush-interval-ms, ledger overwritten in place (a store the daemon owns alone)
    #[arg(long, value_name = "WHEN")]
    pub index_writes: Option<String>,
    /// With deferred index writes: flush index files at most this often [default: 1000]
    #[arg(long, value_name = "MS")]
    pub index_flush_interval_ms: Option<u64>,
    /// Connections served at once; excess ones get a `busy` error and are closed [default: 1024]
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Longest request line in bytes [default: 16777216]
    #[arg(long, value_name = "BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// A started request line must arrive in full within this; else the connection gets an error and is closed
    /// [default: 30000]
    #[arg(long, value_name = "MS")]
    pub line_timeout_ms: Option<u64>,
    /// File-creation mask the daemon sets at start, octal, as systemd's UMask= does [default: 0027]
    #[arg(long, value_name = "MASK")]
    pub umask: Option<String>,
    /// On SIGTERM, how long in-flight requests may take to finish [default: 30000]
    #[arg(long, value_name = "MS")]
    pub shutdown_timeout_ms: Option<u64>,
    /// Byte budget of the in-memory cache of projection files; 0 turns it off [default: 134217728 on Linux, else 0]
    #[arg(long, value_name = "BYTES")]
    pub projection_cache_bytes: Option<usize>,
    /// Log filter in RUST_LOG syntax (RUST_LOG, when set, wins) [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log: Option<String>,
}

/// A validated daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub data: PathBuf,
    pub socket: PathBuf,
    pub socket_mode: u32,
    pub io_backend: IoBackendKind,
    pub durability: Durability,
    pub commit: CommitMode,
    pub mirror: MirrorMode,
    pub sync_strategy: SyncStrategy,
    pub index_writes: IndexWrites,
    pub max_connections: usize,
    pub max_frame_bytes: usize,
    pub line_timeout: Duration,
    pub umask: u32,
    pub shutdown_timeout: Duration,
    /// The projection store's hot tier ([`crate::projection::cache`]); 0: off.
    pub projection_cache_bytes: usize,
    pub log: String,
    /// The file this came from, for SIGHUP reloads.
    pub config_file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config::resolve(&DaemonArgs::default(), &ConfigFile::default()).expect("defaults are valid")
    }
}

impl Config {
    /// Loads the file named by `--config` (if any) and merges it with the flags.
    pub fn load(args: &DaemonArgs) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => ConfigFile::load(path)?,
            None => ConfigFile::default(),
        };
        Config::resolve(args, &file)
    }

    /// Merges flags over file over defaults and validates the result.
    pub fn resolve(args: &DaemonArgs, file: &ConfigFile) -> Result<Config, ConfigError> {
        fn pick<T: Clone>(flag: &Option<T>, file: &Option<T>) -> Option<T> {
            flag.clone().or_else(|| file.clone())
        }
        let socket_mode = match pick(&args.socket_mode, &file.socket_mode) {
            None => SOCKET_MODE_DEFAULT,
            Some(s) => parse_mode("socket_mode", &s)?,
        };
        let umask = match pick(&args.umask, &file.umask) {
            None => crate::limits::UMASK_DEFAULT,
            Some(s) => parse_mode("umask", &s)?,
        };
        let line_timeout = pick(&args.line_timeout_ms, &file.line_timeout_ms)
            .map_or(Duration::from_millis(crate::limits::LINE_TIMEOUT_MS_DEFAULT), Duration::from_millis);
        if line_timeout.is_zero() {
            return Err(invalid("line_timeout_ms", "must be at least 1"));
        }
        let io_backend = match pick(&args.io_backend, &file.io_backend) {
            None => IoBackendKind::Auto,
            Some(s) => s.parse().map_err(|e: String| invalid("io_backend", e))?,
        };
        let durability = match pick(&args.durability, &file.durability) {
            None => Durability::Fsync,
            Some(s) => s.parse().map_err(|e: String| invalid("durability", e))?,
        };
        let commit = match pick(&args.commit, &file.commit) {
            None => CommitMode::default(),
            Some(s) => s.parse().map_err(|e: String| invalid("commit", e))?,
        };
        let mirror = match pick(&args.mirror, &file.mirror) {
            None => MirrorMode::default(),
            Some(s) => s.parse().map_err(|e: String| invalid("mirror", e))?,
        };
        let sync_strategy = match pick(&args.sync_strategy, &file.sync_strategy) {
            None => SyncStrategy::default(),
            Some(s) => s.parse().map_err(|e: String| invalid("sync_strategy", e))?,
        };
        let interval = pick(&args.index_flush_interval_ms, &file.index_flush_interval_ms)
            .map_or(INDEX_FLUSH_INTERVAL_DEFAULT, Duration::from_millis);
        if interval.is_zero() {
            return Err(invalid("index_flush_interval_ms", "must be at least 1"));
        }
        let index_writes = match pick(&args.index_writes, &file.index_writes).as_deref() {
            None | Some("every-commit") => IndexWrites::EveryCommit,
            Some("deferred") => IndexWrites::Deferred { interval },
            Some(other) => {
                return Err(invalid("index_writes", format!("{other:?}: expected every-commit or deferred")));
            }
        };
        let max_connections = pick(&args.max_connections, &file.max_connections).unwrap_or(MAX_CONNECTIONS_DEFAULT);
        if max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        let max_frame_bytes =
            pick(&args.max_frame_bytes, &file.max_frame_bytes).unwrap_or(crate::limits::FRAME_BYTES_DEFAULT);
        if max_frame_bytes < crate::limits::FRAME_BYTES_MIN {
            let min = crate::limits::FRAME_BYTES_MIN;
            return Err(invalid("max_frame_bytes", format!("{max_frame_bytes} is too small (at least {min})")));
        }
        if max_frame_bytes > crate::limits::LINE_BUFFERS_BYTES_TOTAL_MAX {
            let max = crate::limits::LINE_BUFFERS_BYTES_TOTAL_MAX;
            return Err(invalid(
                "max_frame_bytes",
                format!("{max_frame_bytes} is more than all connections' request buffers together ({max})"),
            ));
        }
        let shutdown_timeout = pick(&args.shutdown_timeout_ms, &file.shutdown_timeout_ms)
            .map_or(SHUTDOWN_TIMEOUT_DEFAULT, Duration::from_millis);
        let projection_cache_bytes = pick(&args.projection_cache_bytes, &file.projection_cache_bytes)
            .unwrap_or(crate::projection::PROJECTION_CACHE_BYTES_DEFAULT);
        let log = pick(&args.log, &file.log).unwrap_or_else(|| LOG_DEFAULT.to_string());
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&log) {
            return Err(invalid("log", format!("{log:?}: {e}")));
        }
        let data = pick(&args.data, &file.data).unwrap_or_else(|| PathBuf::from(DATA_DEFAULT));
        let socket = pick(&args.socket, &file.socket).unwrap_or_else(|| PathBuf::from(SOCKET_DEFAULT));
        if data.as_os_str().is_empty() {
            return Err(invalid("data", "must not be empty"));
        }
        if socket.as_os_str().is_empty() {
            return Err(invalid("socket", "must not be empty"));
        }
        // sockaddr_un.sun_path is 108 bytes including the NUL; a pipe name may have up to 256 characters.
        if cfg!(unix) && socket.as_os_str().len() > 107 {
            return Err(invalid("socket", format!("{} is longer than 107 bytes", socket.display())));
        }
        if cfg!(windows) && !socket.to_string_lossy().to_ascii_lowercase().starts_with(r"\\.\pipe\") {
            return Err(invalid("socket", format!(r"{} is not a named pipe (\\.\pipe\NAME)", socket.display())));
        }
        Ok(Config {
            data,
            socket,
            socket_mode,
            io_backend,
            durability,
            commit,
            mirror,
            sync_strategy,
            index_writes,
            max_connections,
            max_frame_bytes,
            line_timeout,
            umask,
            shutdown_timeout,
            projection_cache_bytes,
            log,
            config_file: args.config.clone(),
        })
    }
}

fn parse_mode(key: &'static str, s: &str) -> Result<u32, ConfigError> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o777 => Ok(mode),
        _ => Err(invalid(key, format!("{s:?} is not an octal permission like 0660"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_work_from_a_checkout() {
        let c = Config::default();
        assert_eq!(c.data, PathBuf::from("./opossum-data"));
        assert_eq!(c.socket, PathBuf::from(SOCKET_DEFAULT));
        assert_eq!(c.socket_mode, 0o660);
        assert_eq!(c.durability, Durability::Fsync);
        assert_eq!((c.commit, c.mirror), (CommitMode::Journal, MirrorMode::Live));
        assert_eq!(c.index_writes, IndexWrites::EveryCommit);
        assert_eq!(c.max_connections, 1024);
        assert_eq!(c.max_frame_bytes, 16 * 1024 * 1024);
        assert_eq!(c.projection_cache_bytes, crate::projection::PROJECTION_CACHE_BYTES_DEFAULT);
    }

    #[test]
    fn a_socket_is_a_pipe_name_on_windows() {
        let pipe = DaemonArgs::parse_from(["opossumd", "--socket", r"\\.\pipe\opossumd-2"]);
        let path = DaemonArgs::parse_from(["opossumd", "--socket", "/run/opossum.sock"]);
        let file = ConfigFile::default();
        if cfg!(windows) {
            assert_eq!(Config::resolve(&pipe, &file).unwrap().socket, PathBuf::from(r"\\.\pipe\opossumd-2"));
            assert!(Config::resolve(&path, &file).unwrap_err().to_string().contains("not a named pipe"));
        } else {
            assert!(Config::resolve(&path, &file).is_ok());
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file = ConfigFile::parse(
            "data = \"/d\"\nsocket = \"/s\"\ndurability = \"none\"\nmax_connections = 7\nindex_writes = \"deferred\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        // A socket path, or on Windows a pipe name.
        let socket = if cfg!(windows) { r"\\.\pipe\t" } else { "/t" };
        let args = DaemonArgs::parse_from([
            "opossumd",
            "--socket",
            socket,
            "--io-backend",
            "threads",
            "--projection-cache-bytes",
            "0",
        ]);
        let c = Config::resolve(&args, &file).unwrap();
        assert_eq!(c.data, PathBuf::from("/d"));
        assert_eq!(c.socket, PathBuf::from(socket));
        assert_eq!(c.durability, Durability::None);
        assert_eq!(c.io_backend, IoBackendKind::Threads);
        assert_eq!(c.max_connections, 7);
        assert_eq!(c.projection_cache_bytes, 0);
        let file = ConfigFile::parse("projection_cache_bytes = 1048576\n", Path::new("x.toml")).unwrap();
        assert_eq!(Config::resolve(&DaemonArgs::default(), &file).unwrap().projection_cache_bytes, 1 << 20);
        assert_eq!(c.index_writes, IndexWrites::Deferred { interval: INDEX_FLUSH_INTERVAL_DEFAULT });
    }

    #[test]
    fn bad_values_are_named() {
        let bad = |args: &[&str]| {
            let mut all = vec!["opossumd"];
            all.extend_from_slice(args);
            Config::resolve(&DaemonArgs::parse_from(all), &ConfigFile::default()).unwrap_err().to_string()
        };
        assert!(bad(&["--durability", "maybe"]).contains("durability"));
        assert!(bad(&["--commit", "later"]).contains("commit"));
        assert!(bad(&["--mirror", "sometimes"]).contains("mirror"));
        assert!(bad(&["--io-backend", "fast"]).contains("io_backend"));
        assert!(bad(&["--index-writes", "never"]).contains("index_writes"));
        assert!(bad(&["--socket-mode", "999"]).contains("socket_mode"));
        assert!(bad(&["--umask", "8"]).contains("umask"));
        assert!(bad(&["--line-timeout-ms", "0"]).contains("line_timeout_ms"));
        assert!(bad(&["--max-connections", "0"]).contains("max_connections"));
        assert!(bad(&["--max-frame-bytes", "10"]).contains("max_frame_bytes"));
        assert!(ConfigFile::parse("colour = 1", Path::new("x")).unwrap_err().to_string().contains("colour"));
    }
}
