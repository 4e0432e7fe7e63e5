//! A small blocking client for the wire protocol (docs/PROTOCOL.md), used by the `opossum` CLI, the integration
//! tests and the benchmarks.
//!
//! ```no_run
//! use opossum::client::Client;
//! use opossum::model::{Event, Query, ReadOptions, Tag};
//! let mut client = Client::connect("./opossum.sock")?;
//! let event = Event::new("StudentRegistered", r#"{"name":"Ada"}"#, vec![Tag::new("studentId", "42")])?;
//! let appended = client.append(vec![event], None)?;
//! for event in client.read(&Query::All, ReadOptions::default())? {
//!     println!("{} {}", event?.position, appended.head);
//! }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use transport::Transport;

mod decode;

use serde::de::{DeserializeOwned, IgnoredAny};
use serde::{Deserialize, Serialize};

use crate::model::{AppendCondition, Event, Query, ReadOptions, SequencedEvent, Tag, Tracking};
use crate::projection::{ProjectionItem, ProjectionSummary, Put};
use crate::wire::{
    AppendResponse, ErrorCode, HeadResponse, HelloResponse, ProjectionCheckpointResponse, ProjectionDeleteResponse,
    ProjectionItemIn, ProjectionListResponse, ProjectionPutManyResponse, ProjectionPutResponse, ProjectionReadDone,
    ReadDone, SubscribeDone, TrackingGetResponse, WireError,
};

const READ_BUFFER_BYTES: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed (connect, read or write). Not a `source`: the text is already in the message, and
    /// error chains (`anyhow`'s `{:#}`) would print it twice.
    #[error("connection: {0}")]
    Io(io::Error),
    /// The server answered with an error line.
    #[error("{code}: {message}")]
    Server { code: String, message: String },
    /// The server's answer did not follow the protocol (or the connection closed mid-answer).
    #[error("protocol: {0}")]
    Protocol(String),
}

impl From<io::Error> for ClientError {
    fn from(e: io::Error) -> Self {
        ClientError::Io(e)
    }
}

impl ClientError {
    /// The server's error code, when the server answered with an error line.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::Server { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn is(&self, code: ErrorCode) -> bool {
        self.code() == Some(code.as_str())
    }
}

pub type Result<T, E = ClientError> = std::result::Result<T, E>;

/// One connection to `opossumd`. Requests are answered in order; a [`ReadStream`] must be consumed to its end (or
/// dropped, which closes the connection's usefulness: later calls fail) before the next request.
pub struct Client {
    reader: BufReader<transport::ReadHalf>,
    writer: Transport,
    next_id: u64,
    line: Vec<u8>,
    /// Whether `line` holds a whole line (else the start of one whose read timed out: the next read goes on).
    line_done: bool,
    /// Set when a read stream was abandoned mid-way: the connection is out of step with its requests.
    broken: bool,
}

impl Client {
    pub fn connect(path: impl AsRef<Path>) -> Result<Client> {
        let stream = transport::connect(path.as_ref())?;
        let writer = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::with_capacity(READ_BUFFER_BYTES, transport::ReadHalf::new(stream)),
            writer,
            next_id: 1,
            line: Vec::with_capacity(4096),
            line_done: true,
            broken: false,
        })
    }

    /// Limits how long a single socket read may block (`None`: forever). On Windows a named pipe opened as a file
    /// has no timeouts: the call is accepted and changes nothing there.
    pub fn set_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        transport::set_timeout(&self.writer, timeout)?;
        self.reader.get_ref().set_timeout(timeout);
        Ok(())
    }

    /// Limits how long a single socket read may block (`None`: forever); writes keep theirs.
    fn set_read_timeout(&self, timeout: Option<Duration>) -> Result<()> {
        transport::set_read_timeout(&self.writer, timeout)?;
        self.reader.get_ref().set_timeout(timeout);
        Ok(())
    }

    pub fn hello(&mut self) -> Result<HelloResponse> {
        self.call("hello", &NoBody {})
    }

    pub fn head(&mut self) -> Result<u64> {
        Ok(self.call::<_, HeadResponse>("head", &NoBody {})?.head)
    }

    /// Server and store counters, as the JSON object the server sent (without `id`/`ok`).
    pub fn stats(&mut self) -> Result<serde_json::Value> {
        let mut value: serde_json::Value = self.call("stats", &NoBody {})?;
        if let Some(map) = value.as_object_mut() {
            map.remove("id");
            map.remove("ok");
        }
        Ok(value)
    }

    /// Appends `events` atomically, if `condition` holds; fails with code `append_condition_failed` otherwise.
    /// Events may carry ids (`Event::with_id`): a retry of an append whose answer was lost then returns the first
    /// attempt's positions (`AppendResponse::replayed`) instead of appending again or failing its condition.
    pub fn append(&mut self, events: Vec<Event>, condition: Option<AppendCondition>) -> Result<AppendResponse> {
        self.append_tracked(events, condition, None)
    }

    /// [`Client::append`] with a consumer checkpoint committed with the events: fails with code
    /// `tracking_conflict` (writing nothing) unless `tracking.position` is above the source's last one.
    pub fn append_tracked(
        &mut self,
        events: Vec<Event>,
        condition: Option<AppendCondition>,
        tracking: Option<&Tracking>,
    ) -> Result<AppendResponse> {
        #[derive(Serialize)]
        struct Body<'a> {
            events: Vec<Event>,
            #[serde(skip_serializing_if = "Option::is_none")]
            condition: Option<AppendCondition>,
            #[serde(skip_serializing_if = "Option::is_none")]
            tracking: Option<&'a Tracking>,
        }
        self.call("append", &Body { events, condition, tracking })
    }

    /// The last position an append tracked for `source` (`tracking.get`); 0 when none has.
    pub fn tracking_get(&mut self, source: &str) -> Result<u64> {
        #[derive(Serialize)]
        struct Body<'a> {
            source: &'a str,
        }
        Ok(self.call::<_, TrackingGetResponse>("tracking.get", &Body { source })?.position)
    }

    /// Streams the events matching `query`. Consume the stream to the end before the next request.
    pub fn read(&mut self, query: &Query, options: ReadOptions) -> Result<ReadStream<'_>> {
        #[derive(Serialize)]
        struct Body<'a> {
            query: &'a Query,
            #[serde(skip_serializing_if = "Option::is_none")]
            after: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            before: Option<u64>,
            #[serde(skip_serializing_if = "Option::is_none")]
            limit: Option<u64>,
            #[serde(skip_serializing_if = "std::ops::Not::not")]
            backwards: bool,
        }
        let body = Body {
            query,
            after: options.after,
            before: options.before,
            limit: options.limit,
            backwards: options.backwards,
        };
        let id = self.send("read", &body)?;
        Ok(Stream::new(self, id))
    }

    /// Writes one projection (`projection.put`); returns its new version. With `expected_version`, fails with code
    /// `version_conflict` unless the key's current version is that (0: the key must not exist).
    pub fn projection_put(&mut self, put: &Put) -> Result<u64> {
        Ok(self.call::<_, ProjectionPutResponse>("projection.put", put)?.version)
    }

    /// Writes many projections in one group commit (`projection.put_many`); returns their versions in order.
    pub fn projection_put_many(&mut self, puts: &[Put]) -> Result<Vec<u64>> {
        #[derive(Serialize)]
        struct Body<'a> {
            puts: &'a [Put],
        }
        Ok(self.call::<_, ProjectionPutManyResponse>("projection.put_many", &Body { puts })?.versions)
    }

    /// Reads one projection; `None` when the server answers `not_found`.
    pub fn projection_get(&mut self, projection: &str, key: &str) -> Result<Option<ProjectionItem>> {
        match self.call::<_, ProjectionItemIn>("projection.get", &KeyBody { projection, key }) {
            Ok(item) => Ok(Some(item.into())),
            Err(e) if e.is(ErrorCode::NotFound) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Deletes a projection key; returns whether it existed.
    pub fn projection_delete(&mut self, projection: &str, key: &str) -> Result<bool> {
        Ok(self.call::<_, ProjectionDeleteResponse>("projection.delete", &KeyBody { projection, key })?.deleted)
    }

    /// Streams every projection of `projection`, by key. Consume the stream to the end before the next request.
    pub fn projection_get_all(&mut self, projection: &str) -> Result<ProjectionStream<'_>> {
        #[derive(Serialize)]
        struct Body<'a> {
            projection: &'a str,
        }
        let id = self.send("projection.get_all", &Body { projection })?;
        Ok(Stream::new(self, id))
    }

    /// Streams the projections carrying every one of `tags` (matched case-insensitively), by key.
    pub fn projection_query(&mut self, projection: &str, tags: &[Tag]) -> Result<ProjectionStream<'_>> {
        #[derive(Serialize)]
        struct Body<'a> {
            projection: &'a str,
            tags: &'a [Tag],
        }
        let id = self.send("projection.query", &Body { projection, tags })?;
        Ok(Stream::new(self, id))
    }

    /// Every projection with its number of keys, by name.
    pub fn projection_list(&mut self) -> Result<Vec<ProjectionSummary>> {
        Ok(self.call::<_, ProjectionListResponse>("projection.list", &NoBody {})?.projections)
    }

    /// The checkpoint (last processed event position) of `projection`; `None` when it has none.
    pub fn projection_checkpoint(&mut self, projection: &str) -> Result<Option<u64>> {
        Ok(self
            .call::<_, ProjectionCheckpointResponse>(
                "projection.checkpoint",
                &CheckpointBody { projection, position: None },
            )?
            .position)
    }

    /// Durably records that `projection` has processed the events up to `position`.
    pub fn projection_set_checkpoint(&mut self, projection: &str, position: u64) -> Result<()> {
        let body = CheckpointBody { projection, position: Some(position) };
        self.call::<_, ProjectionCheckpointResponse>("projection.checkpoint", &body)?;
        Ok(())
    }

    /// Sends a request (`body`'s fields next to `id` and `op`) and returns its id, without waiting for the answer.
    pub fn send<B: Serialize>(&mut self, op: &str, body: &B) -> Result<u64> {
        if self.broken {
            return Err(ClientError::Protocol("an earlier read was not consumed to its end; reconnect".into()));
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut line = format!("{{\"id\":{id},\"op\":{}", serde_json::to_string(op).expect("op")).into_bytes();
        let fields = serde_json::to_vec(body).map_err(|e| ClientError::Protocol(format!("encoding {op}: {e}")))?;
        if fields.len() > 2 && fields[0] == b'{' {
            line.push(b',');
            line.extend_from_slice(&fields[1..fields.len() - 1]);
        }
        line.extend_from_slice(b"}\n");
        self.writer.write_all(&line)?;
        Ok(id)
    }

    /// Writes raw bytes to the socket (tests: malformed input, pipelining).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.writer.write_all(bytes)?;
        Ok(())
    }

    /// Reads the next response line as JSON (tests, tools); `None` when the server closed the connection.
    pub fn recv_value(&mut self) -> Result<Option<serde_json::Value>> {
        if !self.recv_line()? {
            return Ok(None);
        }
        serde_json::from_slice(&self.line).map(Some).map_err(|e| ClientError::Protocol(format!("bad response: {e}")))
    }

    fn recv_line(&mut self) -> Result<bool> {
        if self.line_done {
            self.line.clear();
        }
        // A read that times out keeps what it read of the line (`read_until` appends it), and the next call goes on.
        self.line_done = false;
        let n = self.reader.read_until(b'\n', &mut self.line)?;
        if n == 0 && self.line.is_empty() {
            self.line_done = true;
            return Ok(false);
        }
        if self.line.last() != Some(&b'\n') {
            return Err(ClientError::Protocol("connection closed mid-line".into()));
        }
        self.line_done = true;
        Ok(true)
    }

    fn call<B: Serialize, R: DeserializeOwned>(&mut self, op: &str, body: &B) -> Result<R> {
        let id = self.send(op, body)?;
        self.recv_final(id)
    }

    /// Reads the final line of request `id` and decodes its fields as `R`.
    fn recv_final<R: DeserializeOwned>(&mut self, id: u64) -> Result<R> {
        if !self.recv_line()? {
            return Err(ClientError::Protocol("the server closed the connection".into()));
        }
        decode_final(&self.line, id)
    }
}

#[derive(Serialize)]
struct NoBody {}

#[derive(Serialize)]
struct KeyBody<'a> {
    projection: &'a str,
    key: &'a str,
}

#[derive(Serialize)]
struct CheckpointBody<'a> {
    projection: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    position: Option<u64>,
}

#[derive(Deserialize)]
struct FinalHeader {
    #[serde(default)]
    id: serde_json::Value,
    #[serde(default)]
    ok: Option<bool>,
    #[serde(default)]
    error: Option<WireError>,
}

fn decode_final<R: DeserializeOwned>(line: &[u8], id: u64) -> Result<R> {
    let header: FinalHeader =
        serde_json::from_slice(line).map_err(|e| ClientError::Protocol(format!("bad response line: {e}")))?;
    match header.ok {
        Some(false) => {
            let error = header.error.unwrap_or(WireError { code: "unknown".into(), message: String::new() });
            Err(ClientError::Server { code: error.code, message: error.message })
        }
        Some(true) if header.id.as_u64() == Some(id) => serde_json::from_slice(line)
            .map_err(|e| ClientError::Protocol(format!("bad response: {e}: {}", String::from_utf8_lossy(line)))),
        Some(true) => Err(ClientError::Protocol(format!("answer for id {} while waiting for {id}", header.id))),
        None => Err(ClientError::Protocol(format!("expected a final line, got {}", String::from_utf8_lossy(line)))),
    }
}

/// What a streamed response's item lines carry: the field that marks an item line, and how to decode it.
pub trait StreamItem: Sized {
    /// The final line's body.
    type Done: DeserializeOwned + Copy;
    /// Item lines look like `{"id":<id>,"<FIELD>":...}`; final lines carry `"ok"` instead.
    const FIELD: &'static [u8];
    fn decode(line: &[u8]) -> Result<Self>;
}

impl StreamItem for SequencedEvent {
    type Done = ReadDone;
    const FIELD: &'static [u8] = b"\"event\":";
    fn decode(line: &[u8]) -> Result<Self> {
        // The daemon's own spelling directly (most of a read-all's client CPU was serde's general decode); any
        // other line, or a malformed one, through serde_json.
        if let Some(event) = decode::event_line(line) {
            return Ok(event);
        }
        #[derive(Deserialize)]
        struct Item {
            #[serde(rename = "id")]
            _id: IgnoredAny,
            event: SequencedEvent,
        }
        let item: Item =
            serde_json::from_slice(line).map_err(|e| ClientError::Protocol(format!("bad item line: {e}")))?;
        Ok(item.event)
    }
}

impl StreamItem for ProjectionItem {
    type Done = ProjectionReadDone;
    const FIELD: &'static [u8] = b"\"item\":";
    fn decode(line: &[u8]) -> Result<Self> {
        #[derive(Deserialize)]
        struct Item {
            #[serde(rename = "id")]
            _id: IgnoredAny,
            item: ProjectionItemIn,
        }
        let item: Item =
            serde_json::from_slice(line).map_err(|e| ClientError::Protocol(format!("bad item line: {e}")))?;
        Ok(item.item.into())
    }
}

/// The item lines of one streamed response, in the order the server sends them, then its final line. Yields `Err`
/// once if the stream fails. Consume it to the end (dropping it early leaves the connection unusable: reconnect).
pub struct Stream<'a, T: StreamItem> {
    client: &'a mut Client,
    id: u64,
    done: Option<T::Done>,
    failed: bool,
}

/// The events of one read.
pub type ReadStream<'a> = Stream<'a, SequencedEvent>;
/// The projections of one `projection_get_all` or `projection_query` (by key).
pub type ProjectionStream<'a> = Stream<'a, ProjectionItem>;

impl<'a, T: StreamItem> Stream<'a, T> {
    fn new(client: &'a mut Client, id: u64) -> Stream<'a, T> {
        Stream { client, id, done: None, failed: false }
    }

    /// The final line, once the stream has ended successfully.
    pub fn done(&self) -> Option<T::Done> {
        self.done
    }

    /// Collects the rest of the stream.
    pub fn into_vec(self) -> Result<Vec<T>> {
        self.collect()
    }

    fn next_item(&mut self) -> Result<Option<T>> {
        if !self.client.recv_line()? {
            return Err(ClientError::Protocol("the server closed the connection mid-read".into()));
        }
        let line = &self.client.line;
        if memmem(&line[..line.len().min(64)], T::FIELD) {
            return T::decode(line).map(Some);
        }
        self.done = Some(decode_final(line, self.id)?);
        Ok(None)
    }
}

fn memmem(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

impl<T: StreamItem> Iterator for Stream<'_, T> {
    type Item = Result<T>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done.is_some() || self.failed {
            return None;
        }
        match self.next_item() {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(e) => {
                self.failed = true;
                if !matches!(e, ClientError::Server { .. }) {
                    self.client.broken = true;
                }
                Some(Err(e))
            }
        }
    }
}

impl<T: StreamItem> Drop for Stream<'_, T> {
    fn drop(&mut self) {
        if self.done.is_none() && !self.failed {
            self.client.broken = true;
        }
    }
}

/// How long [`Subscription`] keeps trying to reconnect after its connection broke, by default.
pub const SUBSCRIPTION_RECONNECT_DEFAULT: Duration = Duration::from_secs(30);
/// The pause between reconnection attempts.
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);

/// What a subscription's stream carries besides events.
#[derive(Debug, Clone)]
pub enum SubscriptionMessage {
    Event(SequencedEvent),
    /// Sent after a quiet interval: the store's head.
    Heartbeat {
        head: u64,
    },
}

/// A `subscribe` stream on its own connection: every committed event matching a query after a position, then each
/// new one as it commits. When the connection breaks or the daemon stops (a final line), it reconnects and
/// subscribes again after the last event it yielded, for up to [`Subscription::reconnect_for`] — so its consumer
/// sees every event exactly once, in order, across daemon restarts.
///
/// ```no_run
/// use opossum::client::Subscription;
/// use opossum::model::Query;
/// for event in Subscription::new("./opossum.sock", Query::All, 0) {
///     let event = event?;
///     println!("{} {}", event.position, event.event_type);
/// }
/// # Ok::<(), opossum::client::ClientError>(())
/// ```
pub struct Subscription {
    socket: PathBuf,
    query: Query,
    /// Resume point: every match at or below it was yielded.
    after: u64,
    connection: Option<(Client, u64)>,
    reconnect: Duration,
    reconnects: u64,
    head: u64,
    failed: bool,
    /// Read timeout of every connection this subscription opens.
    timeout: Option<Duration>,
}

impl Subscription {
    /// Subscribes (lazily, on the first `next`) to the events matching `query` after position `after`.
    pub fn new(socket: impl AsRef<Path>, query: Query, after: u64) -> Subscription {
        Subscription {
            socket: socket.as_ref().to_path_buf(),
            query,
            after,
            connection: None,
            reconnect: SUBSCRIPTION_RECONNECT_DEFAULT,
            reconnects: 0,
            head: 0,
            failed: false,
            timeout: None,
        }
    }

    /// How long to keep trying to reconnect before giving up with an error (zero: never reconnect).
    pub fn reconnect_for(mut self, period: Duration) -> Subscription {
        self.reconnect = period;
        self
    }

    /// Every matching event at or below this position has been yielded: where a new subscription would resume.
    pub fn position(&self) -> u64 {
        self.after
    }

    /// The store head last seen (in a heartbeat or a final line).
    pub fn head(&self) -> u64 {
        self.head
    }

    /// How many times the subscription reconnected.
    pub fn reconnects(&self) -> u64 {
        self.reconnects
    }

    /// Limits how long one socket read may block; an expired read is an `Io` error (`WouldBlock`/`TimedOut`)
    /// and leaves the subscription usable.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.timeout = timeout;
        if let Some((client, _)) = &self.connection {
            client.set_read_timeout(timeout)?;
        }
        Ok(())
    }

    fn connect(&mut self) -> Result<()> {
        if self.connection.is_some() {
            return Ok(());
        }
        #[derive(Serialize)]
        struct Body<'a> {
            query: &'a Query,
            after: u64,
        }
        let started = Instant::now();
        loop {
            let attempt = Client::connect(&self.socket).and_then(|mut client| {
                client.set_read_timeout(self.timeout)?;
                let id = client.send("subscribe", &Body { query: &self.query, after: self.after })?;
                Ok((client, id))
            });
            match attempt {
                Ok(connection) => {
                    self.connection = Some(connection);
                    return Ok(());
                }
                Err(e) if started.elapsed() >= self.reconnect => return Err(e),
                Err(_) => std::thread::sleep(RECONNECT_PAUSE),
            }
        }
    }

    /// The next event or heartbeat, reconnecting as needed.
    pub fn next_message(&mut self) -> Result<SubscriptionMessage> {
        if self.failed {
            return Err(ClientError::Protocol("the subscription failed earlier".into()));
        }
        let mut lost_at: Option<Instant> = None;
        loop {
            if let Err(e) = self.connect() {
                self.failed = true;
                return Err(e);
            }
            let (client, id) = self.connection.as_mut().expect("connected");
            let line = match client.recv_line() {
                Ok(true) => Some(&client.line),
                Ok(false) => None,
                Err(ClientError::Io(e)) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    return Err(ClientError::Io(e));
                }
                Err(_) => None,
            };
            match line.map(|line| decode_subscription_line(line, *id)) {
                Some(Ok(Line::Event(event))) => {
                    self.after = event.position;
                    return Ok(SubscriptionMessage::Event(event));
                }
                Some(Ok(Line::Heartbeat(head))) => {
                    self.head = head;
                    return Ok(SubscriptionMessage::Heartbeat { head });
                }
                Some(Ok(Line::Done(done))) => {
                    // The daemon is stopping: everything through `done.last` was sent.
                    self.after = self.after.max(done.last);
                    self.head = done.head;
                }
                Some(Err(e @ ClientError::Server { .. })) if !e.is(ErrorCode::ShuttingDown) => {
                    self.failed = true;
                    return Err(e);
                }
                Some(Err(ClientError::Server { .. })) | None => {}
                Some(Err(e)) => {
                    self.failed = true;
                    return Err(e);
                }
            }
            // The connection ended: subscribe again after the last event yielded.
            self.connection = None;
            let since = *lost_at.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.reconnect {
                self.failed = true;
                return Err(ClientError::Protocol("the subscription's connection ended".into()));
            }
            self.reconnects += 1;
            std::thread::sleep(RECONNECT_PAUSE);
        }
    }

    /// Ends the subscription: tells the daemon (closing the writing side), takes the events already on their way
    /// (returned), and its final line.
    pub fn close(mut self) -> Result<(Vec<SequencedEvent>, Option<SubscribeDone>)> {
        let Some((mut client, id)) = self.connection.take() else { return Ok((Vec::new(), None)) };
        transport::shutdown_write(&mut client.writer)?;
        let mut events = Vec::new();
        while client.recv_line()? {
            match decode_subscription_line(&client.line, id)? {
                Line::Event(event) => events.push(event),
                Line::Heartbeat(_) => {}
                Line::Done(done) => return Ok((events, Some(done))),
            }
        }
        Ok((events, None))
    }
}

impl Iterator for Subscription {
    type Item = Result<SequencedEvent>;

    /// The next event (heartbeats are skipped); `None` only after an error was returned.
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.failed {
                return None;
            }
            match self.next_message() {
                Ok(SubscriptionMessage::Event(event)) => return Some(Ok(event)),
                Ok(SubscriptionMessage::Heartbeat { .. }) => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

enum Line {
    Event(SequencedEvent),
    Heartbeat(u64),
    Done(SubscribeDone),
}

fn decode_subscription_line(line: &[u8], id: u64) -> Result<Line> {
    let head = &line[..line.len().min(64)];
    if memmem(head, SequencedEvent::FIELD) {
        return SequencedEvent::decode(line).map(Line::Event);
    }
    if memmem(head, b"\"heartbeat\":") {
        #[derive(Deserialize)]
        struct Heartbeat {
            head: u64,
        }
        let beat: Heartbeat =
            serde_json::from_slice(line).map_err(|e| ClientError::Protocol(format!("bad heartbeat: {e}")))?;
        return Ok(Line::Heartbeat(beat.head));
    }
    decode_final(line, id).map(Line::Done)
}

/// The client's transport, one per platform: a Unix stream socket, or on Windows the daemon's named pipe opened as a
/// file (a blocking handle: the client writes a request, then reads its answer, so reads and writes never overlap).
mod transport {
    use std::io;
    use std::path::Path;
    use std::time::Duration;

    #[cfg(unix)]
    pub(super) type Transport = std::os::unix::net::UnixStream;

    #[cfg(unix)]
    pub(super) fn connect(path: &Path) -> io::Result<Transport> {
        Transport::connect(path)
    }

    /// The reading side of a connection. It waits for data with `poll(POLLIN)` before each read: a read blocked
    /// in the kernel is also woken, for nothing, whenever the daemon takes a request off the socket (a Unix socket
    /// wakes its sleepers when its peer frees write space), which cost a wake-up and two context switches per
    /// request on a machine the client shares with the daemon; `poll` sleeps until data arrives or the timeout.
    #[cfg(unix)]
    pub(super) struct ReadHalf {
        stream: Transport,
        /// The read timeout in milliseconds (`u64::MAX`: none), kept here because `poll` does the waiting.
        timeout_ms: std::sync::atomic::AtomicU64,
    }

    #[cfg(unix)]
    impl ReadHalf {
        pub(super) fn new(stream: Transport) -> ReadHalf {
            ReadHalf { stream, timeout_ms: std::sync::atomic::AtomicU64::new(u64::MAX) }
        }

        pub(super) fn set_timeout(&self, timeout: Option<Duration>) {
            // A timeout that is not zero waits at least a millisecond (as the socket option does).
            let ms = timeout.map_or(u64::MAX, |t| (t.as_nanos().div_ceil(1_000_000)).min(i32::MAX as u128) as u64);
            self.timeout_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
        }
    }

    #[cfg(unix)]
    impl io::Read for ReadHalf {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            use std::os::fd::AsRawFd;
            let timeout = match self.timeout_ms.load(std::sync::atomic::Ordering::Relaxed) {
                u64::MAX => -1,
                ms => ms as libc::c_int,
            };
            let mut fd = libc::pollfd { fd: self.stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            loop {
                // SAFETY: one valid `pollfd` for the duration of the call.
                match unsafe { libc::poll(&mut fd, 1, timeout) } {
                    0 => return Err(io::Error::new(io::ErrorKind::WouldBlock, "the read timed out")),
                    n if n > 0 => break,
                    _ => {
                        let e = io::Error::last_os_error();
                        if e.kind() != io::ErrorKind::Interrupted {
                            return Err(e);
                        }
                    }
                }
            }
            // Readable, at end of stream or in error: the read returns at once either way.
            self.stream.read(buf)
        }
    }

    #[cfg(unix)]
    pub(super) fn set_timeout(stream: &Transport, timeout: Option<Duration>) -> io::Result<()> {
        stream.set_read_timeout(timeout)?;
        stream.set_write_timeout(timeout)
    }

    #[cfg(unix)]
    pub(super) fn set_read_timeout(stream: &Transport, timeout: Option<Duration>) -> io::Result<()> {
        stream.set_read_timeout(timeout)
    }

    /// Tells the daemon this side sends nothing more (ends a subscription: it stops at EOF or at any line).
    #[cfg(unix)]
    pub(super) fn shutdown_write(stream: &mut Transport) -> io::Result<()> {
        stream.shutdown(std::net::Shutdown::Write)
    }

    #[cfg(windows)]
    pub(super) type Transport = std::fs::File;

    /// The reading side of a connection: the pipe handle itself (no timeouts, see `set_timeout`).
    #[cfg(windows)]
    pub(super) struct ReadHalf(Transport);

    #[cfg(windows)]
    impl ReadHalf {
        pub(super) fn new(stream: Transport) -> ReadHalf {
            ReadHalf(stream)
        }

        pub(super) fn set_timeout(&self, _timeout: Option<Duration>) {}
    }

    #[cfg(windows)]
    impl io::Read for ReadHalf {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.0.read(buf)
        }
    }

    /// Opens the pipe; while all its instances are connected (`ERROR_PIPE_BUSY`, until the server has created the
    /// next one), retries for up to [`crate::limits::PIPE_BUSY_WAIT_MS_MAX`].
    #[cfg(windows)]
    pub(super) fn connect(path: &Path) -> io::Result<Transport> {
        use crate::limits::{PIPE_BUSY_RETRY_MS, PIPE_BUSY_WAIT_MS_MAX};
        const ERROR_PIPE_BUSY: i32 = 231;
        let deadline = std::time::Instant::now() + Duration::from_millis(PIPE_BUSY_WAIT_MS_MAX);
        loop {
            match std::fs::OpenOptions::new().read(true).write(true).open(path) {
                Err(e) if e.raw_os_error() == Some(ERROR_PIPE_BUSY) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(PIPE_BUSY_RETRY_MS));
                }
                opened => return opened,
            }
        }
    }

    /// A pipe handle opened without overlapped I/O has no read or write timeout: nothing to set.
    #[cfg(windows)]
    pub(super) fn set_timeout(_stream: &Transport, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    #[cfg(windows)]
    pub(super) fn set_read_timeout(_stream: &Transport, _timeout: Option<Duration>) -> io::Result<()> {
        Ok(())
    }

    /// A named pipe has no half-close; a subscription also ends at any line the client sends, so send an empty one.
    #[cfg(windows)]
    pub(super) fn shutdown_write(stream: &mut Transport) -> io::Result<()> {
        use std::io::Write;
        stream.write_all(b"\n")?;
        stream.flush()
    }
}
