//! The two stores behind one interface: how the driver starts, stops and restarts each server, and how a client of
//! each appends, reads and queries. The workloads (`main.rs`) only see [`Server`] and [`PeerClient`], so both
//! systems run the same code with the same event shapes.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use opossum::client::Client;
use opossum::model::{AppendCondition, Event, Query, QueryItem, ReadOptions, Tag};
use opossum::wire::ErrorCode;
use opossum_bench::daemon::Daemon;
use umadb_client::{SyncUmaDbClient, UmaDbClient};
use umadb_dcb::{DcbAppendCondition, DcbError, DcbEvent, DcbEventStoreSync as _, DcbQuery, DcbQueryItem};

/// The one event type of the peer workloads.
pub const EVENT_TYPE: &str = "StudentEnrolled";
/// How long a freshly started UmaDB server may take to answer.
const UMADB_READY_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to exit after SIGTERM before it is killed (and the run fails).
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

/// An event as both systems receive it: one type ([`EVENT_TYPE`]), JSON data, 1–2 `key:value` tags.
#[derive(Debug, Clone)]
pub struct PeerEvent {
    pub data: String,
    pub tags: Vec<(String, String)>,
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    /// The position of the last appended event.
    At(u64),
    /// The append condition failed.
    Rejected,
}

/// A connection to one of the systems.
pub trait PeerClient: Send {
    /// Appends `events` atomically; with a condition `(tag, after)`: fail if an event tagged `tag` exists after
    /// `after` (anywhere when `None`).
    fn append(
        &mut self,
        events: &[PeerEvent],
        condition: Option<(&(String, String), Option<u64>)>,
    ) -> anyhow::Result<Appended>;
    /// Reads every event into the client library's event type, checking that positions increase; the count.
    fn read_all(&mut self) -> anyhow::Result<u64>;
    /// Reads the events carrying `tag`; the count.
    fn query_tag(&mut self, tag: &(String, String)) -> anyhow::Result<u64>;
    /// The last position (0 when empty).
    fn head(&mut self) -> anyhow::Result<u64>;
}

/// A running server of either system.
pub enum Server {
    Opossum(Daemon),
    Umadb(UmadbServer),
}

impl Server {
    pub fn pid(&self) -> Option<u32> {
        match self {
            Server::Opossum(d) => d.pid(),
            Server::Umadb(u) => u.child.as_ref().map(Child::id),
        }
    }

    /// Stops the server and starts it again on the same store (an empty process: nothing cached in it).
    pub fn restart(&mut self, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        match self {
            Server::Opossum(d) => d.restart(),
            Server::Umadb(u) => u.restart(rt),
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(self) -> anyhow::Result<()> {
        match self {
            Server::Opossum(d) => d.stop().map(drop),
            Server::Umadb(u) => u.stop(),
        }
    }

    /// A new connection. UmaDB's synchronous client drives its calls on `rt`.
    pub fn connect(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<Box<dyn PeerClient>> {
        match self {
            Server::Opossum(d) => Ok(Box::new(OpossumClient(
                Client::connect(&d.socket).with_context(|| format!("connecting to {}", d.socket.display()))?,
            ))),
            Server::Umadb(u) => Ok(Box::new(UmadbClient(u.connect(rt)?))),
        }
    }
}

struct OpossumClient(Client);

fn opossum_tag((key, value): &(String, String)) -> Tag {
    Tag::new(key.as_str(), value.as_str())
}

fn opossum_tag_query(tag: &(String, String)) -> anyhow::Result<Query> {
    Ok(Query::items(vec![QueryItem::new(Vec::new(), vec![opossum_tag(tag)])?])?)
}

impl PeerClient for OpossumClient {
    fn append(
        &mut self,
        events: &[PeerEvent],
        condition: Option<(&(String, String), Option<u64>)>,
    ) -> anyhow::Result<Appended> {
        let events = events
            .iter()
            .map(|e| Event::new(EVENT_TYPE, &e.data, e.tags.iter().map(opossum_tag).collect()))
            .collect::<Result<Vec<_>, _>>()?;
        let condition = match condition {
            Some((tag, after)) => Some(AppendCondition { fail_if_events_match: opossum_tag_query(tag)?, after }),
            None => None,
        };
        match self.0.append(events, condition) {
            Ok(a) => Ok(Appended::At(a.last)),
            Err(e) if e.is(ErrorCode::AppendConditionFailed) => Ok(Appended::Rejected),
            Err(e) => Err(e.into()),
        }
    }

    fn read_all(&mut self) -> anyhow::Result<u64> {
        let (mut count, mut last) = (0, 0);
        for event in self.0.read(&Query::All, ReadOptions::default())? {
            let event = event?;
            anyhow::ensure!(event.position > last, "opossum: position {} after {last}", event.position);
            last = event.position;
            count += 1;
        }
        Ok(count)
    }

    fn query_tag(&mut self, tag: &(String, String)) -> anyhow::Result<u64> {
        let mut count = 0;
        for event in self.0.read(&opossum_tag_query(tag)?, ReadOptions::default())? {
            event?;
            count += 1;
        }
        Ok(count)
    }

    fn head(&mut self) -> anyhow::Result<u64> {
        Ok(self.0.head()?)
    }
}

struct UmadbClient(SyncUmaDbClient);

fn umadb_tag((key, value): &(String, String)) -> String {
    format!("{key}:{value}")
}

fn umadb_tag_query(tag: &(String, String)) -> DcbQuery {
    DcbQuery::new().item(DcbQueryItem::new().tags([umadb_tag(tag)]))
}

impl PeerClient for UmadbClient {
    fn append(
        &mut self,
        events: &[PeerEvent],
        condition: Option<(&(String, String), Option<u64>)>,
    ) -> anyhow::Result<Appended> {
        let events = events
            .iter()
            .map(|e| {
                DcbEvent::default()
                    .event_type(EVENT_TYPE)
                    .tags(e.tags.iter().map(umadb_tag))
                    .data(e.data.as_bytes().to_vec())
            })
            .collect();
        let condition =
            condition.map(|(tag, after)| DcbAppendCondition { fail_if_events_match: umadb_tag_query(tag), after });
        match self.0.append(events, condition, None) {
            Ok(last) => Ok(Appended::At(last)),
            Err(DcbError::IntegrityError(_)) => Ok(Appended::Rejected),
            Err(e) => Err(anyhow::anyhow!("umadb append: {e}")),
        }
    }

    fn read_all(&mut self) -> anyhow::Result<u64> {
        let (mut count, mut last) = (0, 0);
        let response = self.0.read(None, None, false, None).map_err(|e| anyhow::anyhow!("umadb read: {e}"))?;
        for event in response {
            let event = event.map_err(|e| anyhow::anyhow!("umadb read: {e}"))?;
            anyhow::ensure!(event.position > last, "umadb: position {} after {last}", event.position);
            last = event.position;
            count += 1;
        }
        Ok(count)
    }

    fn query_tag(&mut self, tag: &(String, String)) -> anyhow::Result<u64> {
        let response = self
            .0
            .read(Some(umadb_tag_query(tag)), None, false, None)
            .map_err(|e| anyhow::anyhow!("umadb read: {e}"))?;
        let mut count = 0;
        for event in response {
            event.map_err(|e| anyhow::anyhow!("umadb read: {e}"))?;
            count += 1;
        }
        Ok(count)
    }

    fn head(&mut self) -> anyhow::Result<u64> {
        Ok(self.0.head().map_err(|e| anyhow::anyhow!("umadb head: {e}"))?.unwrap_or(0))
    }
}

/// A UmaDB server process: `umadb --listen 127.0.0.1:<port> --db-path <store>/uma.db`, logging to `<store>.log`.
pub struct UmadbServer {
    child: Option<Child>,
    binary: PathBuf,
    db_path: PathBuf,
    log: PathBuf,
    addr: SocketAddr,
    args: Vec<String>,
}

impl UmadbServer {
    /// Starts `binary` on a store in the directory `store` (created), listening on a free loopback port, and waits
    /// until it answers a `head`.
    pub fn start(
        binary: &Path,
        store: &Path,
        args: &[String],
        rt: &tokio::runtime::Runtime,
    ) -> anyhow::Result<UmadbServer> {
        std::fs::create_dir_all(store).with_context(|| format!("creating {}", store.display()))?;
        let mut server = UmadbServer {
            child: None,
            binary: binary.to_path_buf(),
            db_path: store.join("uma.db"),
            log: store.with_extension("log"),
            addr: free_port()?,
            args: args.to_vec(),
        };
        server.spawn(rt)?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn spawn(&mut self, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let mut child = Command::new(&self.binary)
            .arg("--listen")
            .arg(self.addr.to_string())
            .arg("--db-path")
            .arg(&self.db_path)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.binary.display()))?;
        let start = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                bail!("umadb exited before it was ready: {status} (log: {})", self.log.display());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
                let ready = {
                    let _runtime = rt.enter();
                    UmaDbClient::new(self.url()).connect().and_then(|c| c.head())
                };
                if ready.is_ok() {
                    break;
                }
            }
            if start.elapsed() > UMADB_READY_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!("umadb not ready after {UMADB_READY_TIMEOUT:?} (log: {})", self.log.display());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
        Ok(())
    }

    fn connect(&self, rt: &tokio::runtime::Runtime) -> anyhow::Result<SyncUmaDbClient> {
        // The client's calls block on the runtime that is current when it connects: one runtime for all clients,
        // rather than one per client thread (which it would make itself).
        let _runtime = rt.enter();
        UmaDbClient::new(self.url())
            .connect()
            .map_err(|e| anyhow::anyhow!("connecting to umadb at {}: {e}", self.url()))
    }

    fn restart(&mut self, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        stop_child(self.child.take().context("umadb is not running")?, "umadb")?;
        self.spawn(rt)
    }

    fn stop(mut self) -> anyhow::Result<()> {
        stop_child(self.child.take().context("umadb is not running")?, "umadb")
    }
}

impl Drop for UmadbServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// SIGTERM, then wait up to [`STOP_TIMEOUT`]; a server that ends by the signal itself (no handler) counts as a
/// clean stop, any other failure status does not.
fn stop_child(mut child: Child, name: &str) -> anyhow::Result<()> {
    use std::os::unix::process::ExitStatusExt as _;
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).with_context(|| format!("signalling {name}"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() || status.signal() == Some(libc_sigterm()) {
                return Ok(());
            }
            bail!("{name} exited with {status}");
        }
        if start.elapsed() > STOP_TIMEOUT {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{name} did not stop within {STOP_TIMEOUT:?} of SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn libc_sigterm() -> i32 {
    nix::sys::signal::Signal::SIGTERM as i32
}

/// A loopback address with a port nobody listens on now.
fn free_port() -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
