//! `opossum`: command-line client for `opossumd` (docs/PROTOCOL.md).
//!
//! ```text
//! opossum head
//! opossum append --type StudentRegistered --data '{"name":"Ada"}' --tag studentId=42
//! opossum append --fail-if-tag studentId=42 --fail-if-type StudentRegistered < events.ndjson
//! opossum read --type StudentRegistered --tag studentId=42 --backwards --limit 1
//! opossum export all.ndjson && opossum --socket other.sock import all.ndjson
//! opossum export --opossum /backup/tree --store /var/lib/opossum      # offline: the daemon stopped
//! opossum verify --store /var/lib/opossum                              # offline: journal <-> Opossum tree
//! opossum projection put StudentShortInfo 42 '{"Name":"Ada"}' --tag EnrollmentTier=Basic
//! opossum projection query StudentShortInfo --tag enrollmenttier=basic
//! ```
//!
//! Exit status ([`EXIT_STATUS_HELP`]): 0 ok; 1 the append's condition failed, a version conflict, or the key was
//! not found; 2 bad input (flags, JSON, a request the daemon refused as invalid); 3 the daemon is unreachable
//! (no socket, busy, shutting down, connection lost); 4 the daemon failed the request (storage_error).
//! The offline tools (`export --opossum`, `verify`) read a stopped store's journal directly: 1 the tree differs
//! from the journal; 2 bad input (the store is in use, has no journal, the target is not empty); 4 a storage error.

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use opossum::client::Client;
use opossum::model::{AppendCondition, Event, Query, QueryItem, ReadOptions, Tag};
use serde_json::value::RawValue;

/// The exit statuses, as `opossum --help` shows them.
const EXIT_STATUS_HELP: &str = "Exit status:
  0  ok
  1  the append's condition failed, a projection version conflict, or the key was not found
  2  bad input: flags, JSON, a file, or a request the daemon refused as invalid
  3  the daemon is unreachable: no socket, busy, shutting down, or the connection was lost
  4  the daemon failed the request (storage_error)

Offline tools (export --opossum, verify) work on a stopped store (they take .opossumd.lock and .store.lock and
fail at once if a daemon holds them): 1 the tree differs from the journal (verify); 2 bad input (the store is in
use, has no journal, the target directory is not empty); 4 a storage error.";

const EXIT_OK: i32 = 0;
const EXIT_NO: i32 = 1;
const EXIT_BAD_INPUT: i32 = 2;
const EXIT_UNREACHABLE: i32 = 3;
const EXIT_SERVER_FAILED: i32 = 4;

#[derive(Parser)]
#[command(name = "opossum", version, about = "Client for the opossumd event store daemon", after_help = EXIT_STATUS_HELP)]
struct Cli {
    /// The daemon's socket (on Windows its named pipe, `\\.\pipe\NAME`)
    #[arg(long, global = true, env = "OPOSSUM_SOCKET", default_value = opossum::config::SOCKET_DEFAULT)]
    socket: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Server name, version, protocol, io backend and head
    Hello,
    /// The store's head position (0 when empty)
    Head,
    /// Server and store counters
    Stats,
    /// Append one event given by flags, or (without --type) the NDJSON events on stdin, atomically
    Append(AppendArgs),
    /// Read events as NDJSON
    Read(ReadArgs),
    /// Append NDJSON events (as `export` or `read` write them; positions are reassigned) in batches
    Import(ImportArgs),
    /// Write matching events as NDJSON to a file or stdout; or, with --opossum DIR, a complete Opossum tree
    /// (events/, Indices/, .ledger: what files mode writes) from the journal of a stopped store
    Export(ExportArgs),
    /// Offline check of a stopped store: every event file of the Opossum tree equals its journal record, the ledger
    /// names the journal's head, the index files list exactly the positions of their events. Exit status 1 with the
    /// first differences (file, position, what differs) on stdout; 0 and a one-line summary otherwise
    Verify(VerifyArgs),
    /// Follow the matching events as NDJSON: those after --after, then each new one as it commits (reconnects and
    /// resumes after the last event printed when the daemon restarts)
    Subscribe(SubscribeArgs),
    /// Projection store: put, put-many, get, delete, get-all, query, list, checkpoint
    #[command(subcommand)]
    Projection(ProjectionCommand),
    /// The last position an append tracked for SOURCE (0 when none)
    Tracking { source: String },
}

#[derive(Args)]
struct QueryArgs {
    /// Match this event type (repeatable; any of them)
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Match events carrying this tag (repeatable; all of them)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    tags: Vec<Tag>,
    /// A full query in wire form: "all" or {"items":[...]} (instead of --type/--tag)
    #[arg(long, value_name = "JSON", conflicts_with_all = ["types", "tags"])]
    query: Option<String>,
    /// Only events after this position
    #[arg(long)]
    after: Option<u64>,
    /// Only events before this position
    #[arg(long)]
    before: Option<u64>,
    /// At most this many events
    #[arg(long)]
    limit: Option<u64>,
    /// Newest first
    #[arg(long)]
    backwards: bool,
}

impl QueryArgs {
    fn query(&self) -> anyhow::Result<Query> {
        if let Some(text) = &self.query {
            return serde_json::from_str(text).context("--query");
        }
        if self.types.is_empty() && self.tags.is_empty() {
            return Ok(Query::All);
        }
        Ok(Query::items(vec![QueryItem::new(self.types.clone(), self.tags.clone())?])?)
    }

    fn options(&self) -> ReadOptions {
        ReadOptions { after: self.after, before: self.before, limit: self.limit, backwards: self.backwards }
    }
}

#[derive(Args)]
struct SubscribeArgs {
    /// Match this event type (repeatable; any of them)
    #[arg(long = "type", value_name = "TYPE")]
    types: Vec<String>,
    /// Match events carrying this tag (repeatable; all of them)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    tags: Vec<Tag>,
    /// A full query in wire form: "all" or {"items":[...]} (instead of --type/--tag)
    #[arg(long, value_name = "JSON", conflicts_with_all = ["types", "tags"])]
    query: Option<String>,
    /// Only events after this position
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// Exit once everything up to the store's head is printed (the first heartbeat), instead of following
    #[arg(long)]
    stop_at_head: bool,
    /// How long to keep trying to reconnect when the connection breaks, in seconds
    #[arg(long, default_value_t = 30)]
    reconnect_secs: u64,
}

#[derive(Args)]
struct AppendArgs {
    /// Event type (without it, events are read as NDJSON from stdin)
    #[arg(long = "type", value_name = "TYPE")]
    event_type: Option<String>,
    /// Event data, any JSON value
    #[arg(long, default_value = "{}", requires = "event_type")]
    data: String,
    /// A tag of the event (repeatable)
    #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag, requires = "event_type")]
    tags: Vec<Tag>,
    /// Metadata object
    #[arg(long, value_name = "JSON", requires = "event_type")]
    metadata: Option<String>,
    /// Condition: fail if an event of this type (repeatable) ...
    #[arg(long = "fail-if-type", value_name = "TYPE")]
    fail_if_types: Vec<String>,
    /// ... carrying these tags (repeatable) exists
    #[arg(long = "fail-if-tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
    fail_if_tags: Vec<Tag>,
    /// A full condition in wire form {"fail_if_events_match":..,"after":..}
    #[arg(long, value_name = "JSON", conflicts_with_all = ["fail_if_types", "fail_if_tags"])]
    condition: Option<String>,
    /// ... after this position (the position your decision was based on)
    #[arg(long)]
    after: Option<u64>,
    /// The event's id, a UUID: retrying the same append returns its first positions (journal mode)
    #[arg(long, value_name = "UUID", requires = "event_type")]
    id: Option<opossum::model::EventId>,
    /// Commit a consumer checkpoint with the events: fails (tracking_conflict) unless POSITION is above the
    /// source's last one (journal mode)
    #[arg(long, value_name = "SOURCE=POSITION", value_parser = parse_tracking)]
    tracking: Option<opossum::model::Tracking>,
}

fn parse_tracking(text: &str) -> Result<opossum::model::Tracking, String> {
    let (source, position) = text.rsplit_once('=').ok_or("expected SOURCE=POSITION")?;
    let position = position.parse().map_err(|e| format!("position {position:?}: {e}"))?;
    Ok(opossum::model::Tracking::new(source, position))
}

#[derive(Args)]
struct ReadArgs {
    #[command(flatten)]
    query: QueryArgs,
}

#[derive(Args)]
struct ImportArgs {
    /// NDJSON file of events ("-" for stdin)
    #[arg(default_value = "-")]
    file: PathBuf,
    /// Events per append request (each batch is atomic)
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// Skip the first N lines of the input (to resume an import that stopped: it says which N)
    #[arg(long, value_name = "N", default_value_t = 0)]
    skip_lines: u64,
}

/// An event line of `import`/`append`: the `Event` fields, and the `position` that `export` and `read` write
/// (ignored: the store assigns positions). Any other field is refused, as the daemon refuses it.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EventLine {
    #[serde(default, rename = "position")]
    _position: Option<u64>,
    #[serde(rename = "type")]
    event_type: String,
    data: Box<RawValue>,
    #[serde(default)]
    tags: Vec<Tag>,
    #[serde(default)]
    metadata: Option<Box<RawValue>>,
    #[serde(default)]
    id: Option<opossum::model::EventId>,
}

fn parse_event_line(line: &str) -> anyhow::Result<Event> {
    let e: EventLine = serde_json::from_str(line)?;
    Ok(Event { event_type: e.event_type, data: e.data, tags: e.tags, metadata: e.metadata, id: e.id })
}

#[derive(Args)]
struct ExportArgs {
    /// Output file ("-" for stdout)
    #[arg(default_value = "-")]
    file: PathBuf,
    #[command(flatten)]
    query: QueryArgs,
    /// Write a complete Opossum tree into DIR (absent or empty) from the journal of the stopped store --store,
    /// instead of NDJSON from the daemon
    #[arg(long, value_name = "DIR",
          conflicts_with_all = ["file", "types", "tags", "query", "after", "before", "limit", "backwards"])]
    opossum: Option<PathBuf>,
    /// With --opossum: the store directory (opossumd's --data)
    #[arg(long, value_name = "DIR", env = "OPOSSUM_DATA", default_value = opossum::config::DATA_DEFAULT)]
    store: PathBuf,
}

#[derive(Args)]
struct VerifyArgs {
    /// The store directory (opossumd's --data); the daemon must be stopped
    #[arg(long, value_name = "DIR", env = "OPOSSUM_DATA", default_value = opossum::config::DATA_DEFAULT)]
    store: PathBuf,
    /// Name at most this many differences
    #[arg(long, value_name = "N", default_value_t = 20)]
    max_differences: usize,
}

#[derive(Subcommand)]
enum ProjectionCommand {
    /// Write one projection; prints its new version
    Put {
        projection: String,
        key: String,
        /// The state, any JSON value
        state: String,
        /// A tag (repeatable; replaces the key's tags)
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag)]
        tags: Vec<Tag>,
        /// Fail with version_conflict unless the current version is this (0: the key must not exist)
        #[arg(long)]
        expected_version: Option<u64>,
    },
    /// Write the NDJSON puts on stdin ({"projection","key","state","tags"?,"expected_version"?}) in batches
    PutMany {
        /// Puts per request (each request is one group commit)
        #[arg(long, default_value_t = 1000)]
        batch: usize,
    },
    /// Print one projection (exit status 1 when the key does not exist)
    Get { projection: String, key: String },
    /// Delete one projection key
    Delete { projection: String, key: String },
    /// Print every projection of a projection as NDJSON
    GetAll { projection: String },
    /// Print the projections carrying all of the tags (case-insensitive) as NDJSON
    Query {
        projection: String,
        #[arg(long = "tag", value_name = "KEY=VALUE", value_parser = parse_tag, required = true)]
        tags: Vec<Tag>,
    },
    /// Every projection with its number of keys
    List,
    /// Print a projection's checkpoint, or set it with --set
    Checkpoint {
        projection: String,
        #[arg(long, value_name = "POSITION")]
        set: Option<u64>,
    },
}

fn parse_tag(s: &str) -> Result<Tag, String> {
    match s.split_once('=') {
        Some((k, v)) => Ok(Tag::new(k, v)),
        None => Err(format!("{s:?}: expected KEY=VALUE")),
    }
}

fn main() {
    let cli = Cli::parse();
    let result = run(cli);
    if let Err(e) = result {
        // `opossum read | head` is not an error.
        if e.downcast_ref::<io::Error>().is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe) {
            return;
        }
        eprintln!("opossum: {e:#}");
        std::process::exit(exit_status(&e));
    }
    std::process::exit(EXIT_OK);
}

/// A "no" answer the exit status reports as 1 (not found), without an error from the daemon.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct NotFound(String);

/// The exit status of an error ([`EXIT_STATUS_HELP`]).
fn exit_status(e: &anyhow::Error) -> i32 {
    use opossum::client::ClientError;
    use opossum::store::tools::ToolError;
    if e.chain().any(|c| c.is::<NotFound>() || c.is::<Inconsistent>()) {
        return EXIT_NO;
    }
    if let Some(tool) = e.chain().find_map(|c| c.downcast_ref::<ToolError>()) {
        return match tool {
            ToolError::InUse { .. } | ToolError::NoJournal(_) | ToolError::NotEmpty(_) | ToolError::Overlaps(_) => {
                EXIT_BAD_INPUT
            }
            _ => EXIT_SERVER_FAILED,
        };
    }
    if e.chain().any(|c| c.is::<Unreachable>()) {
        return EXIT_UNREACHABLE;
    }
    match e.chain().find_map(|c| c.downcast_ref::<ClientError>()) {
        Some(ClientError::Server { code, .. }) => match code.as_str() {
            "append_condition_failed" | "tracking_conflict" | "not_found" | "version_conflict" => EXIT_NO,
            "invalid_request" | "limit_exceeded" | "frame_too_large" | "unknown_op" => EXIT_BAD_INPUT,
            "busy" | "shutting_down" => EXIT_UNREACHABLE,
            _ => EXIT_SERVER_FAILED,
        },
        Some(ClientError::Io(_)) | Some(ClientError::Protocol(_)) => EXIT_UNREACHABLE,
        None => EXIT_BAD_INPUT,
    }
}

/// The daemon could not be reached: exit status 3.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Unreachable(String);

fn connect(cli: &Cli) -> anyhow::Result<Client> {
    Client::connect(&cli.socket).map_err(|e| {
        let socket = cli.socket.display();
        let cause = match &e {
            opossum::client::ClientError::Io(io) => io.to_string(),
            other => other.to_string(),
        };
        let hint = match &e {
            opossum::client::ClientError::Io(io)
                if matches!(io.kind(), io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused) =>
            {
                format!("; is opossumd running on {socket}? (--socket or OPOSSUM_SOCKET)")
            }
            _ => String::new(),
        };
        Unreachable(format!("cannot connect to {socket}: {cause}{hint}")).into()
    })
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer(&mut out, value)?;
    out.write_all(b"\n")?;
    Ok(())
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // The offline tools never talk to a daemon.
    match &cli.command {
        Command::Export(ExportArgs { opossum: Some(target), store, .. }) => return export_tree(store, target),
        Command::Verify(args) => return verify(args),
        _ => {}
    }
    let mut client = connect(&cli)?;
    match &cli.command {
        Command::Hello => print_json(&client.hello()?),
        Command::Head => print_json(&serde_json::json!({ "head": client.head()? })),
        Command::Stats => print_json(&client.stats()?),
        Command::Append(args) => append(&mut client, args),
        Command::Read(args) => export(&mut client, &args.query, &PathBuf::from("-"), false),
        Command::Export(args) => export(&mut client, &args.query, &args.file, true),
        Command::Import(args) => import(&mut client, args),
        Command::Subscribe(args) => subscribe(&cli.socket, args),
        Command::Tracking { source } => {
            print_json(&serde_json::json!({ "source": source, "position": client.tracking_get(source)? }))
        }
        Command::Projection(command) => projection(&mut client, command),
        Command::Verify(_) => unreachable!("offline"),
    }
}

/// `verify` found differences: exit status 1.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Inconsistent(String);

/// A progress callback for the offline tools, drawing `bar` (positions as units).
fn track(bar: &ProgressBar) -> impl FnMut(u64, u64) + '_ {
    |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    }
}

fn export_tree(store: &std::path::Path, target: &std::path::Path) -> anyhow::Result<()> {
    let bar = progress(0, "{spinner} exporting [{bar:40}] position {pos}/{len} {per_sec} ({eta})");
    let exported = opossum::store::tools::export_tree(store, target, &mut track(&bar));
    bar.finish_and_clear();
    let exported = exported.with_context(|| format!("exporting the Opossum tree of {}", store.display()))?;
    print_json(&serde_json::json!({
        "events": exported.events,
        "index_files": exported.index_files,
        "bytes": exported.bytes,
        "tree": target,
    }))
}

fn verify(args: &VerifyArgs) -> anyhow::Result<()> {
    let bar = progress(0, "{spinner} verifying [{bar:40}] position {pos}/{len} {per_sec} ({eta})");
    let report = opossum::store::tools::verify(&args.store, args.max_differences, &mut track(&bar));
    bar.finish_and_clear();
    let report = report.with_context(|| format!("verifying {}", args.store.display()))?;
    if report.is_consistent() {
        println!(
            "{}: consistent: journal head {}, {} event files and {} index files match the journal",
            args.store.display(),
            report.head,
            report.event_files,
            report.index_files
        );
        return Ok(());
    }
    let mut out = io::stdout().lock();
    for d in &report.differences {
        writeln!(out, "{d}")?;
    }
    out.flush()?;
    Err(Inconsistent(format!(
        "{}: the Opossum tree differs from the journal in {} places (the first {} above; journal head {})",
        args.store.display(),
        report.differences_total,
        report.differences.len(),
        report.head
    ))
    .into())
}

fn projection(client: &mut Client, command: &ProjectionCommand) -> anyhow::Result<()> {
    use opossum::projection::{ProjectionItem, Put};
    use opossum::wire::ProjectionItemOut;
    fn print_items(items: impl Iterator<Item = opossum::client::Result<ProjectionItem>>) -> anyhow::Result<()> {
        let mut out = BufWriter::new(io::stdout().lock());
        for item in items {
            serde_json::to_writer(&mut out, &ProjectionItemOut::from(&item?))?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
        Ok(())
    }
    match command {
        ProjectionCommand::Put { projection, key, state, tags, expected_version } => {
            let state = RawValue::from_string(state.clone()).context("the state is not valid JSON")?;
            let put = Put {
                projection: projection.clone(),
                key: key.clone(),
                state,
                tags: tags.clone(),
                expected_version: *expected_version,
            };
            print_json(&serde_json::json!({ "version": client.projection_put(&put)? }))
        }
        ProjectionCommand::PutMany { batch } => {
            if *batch == 0 {
                bail!("--batch must be at least 1");
            }
            let (mut puts, mut written) = (Vec::new(), 0usize);
            for (n, line) in io::stdin().lock().lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                puts.push(serde_json::from_str::<Put>(&line).with_context(|| format!("stdin line {}", n + 1))?);
                if puts.len() >= *batch {
                    written += client.projection_put_many(&std::mem::take(&mut puts))?.len();
                }
            }
            if !puts.is_empty() {
                written += client.projection_put_many(&puts)?.len();
            }
            print_json(&serde_json::json!({ "written": written }))
        }
        ProjectionCommand::Get { projection, key } => match client.projection_get(projection, key)? {
            Some(item) => print_json(&ProjectionItemOut::from(&item)),
            None => Err(NotFound(format!("projection {projection}: no key {key:?}")).into()),
        },
        ProjectionCommand::Delete { projection, key } => {
            print_json(&serde_json::json!({ "deleted": client.projection_delete(projection, key)? }))
        }
        ProjectionCommand::GetAll { projection } => print_items(client.projection_get_all(projection)?),
        ProjectionCommand::Query { projection, tags } => print_items(client.projection_query(projection, tags)?),
        ProjectionCommand::List => print_json(&client.projection_list()?),
        ProjectionCommand::Checkpoint { projection, set: Some(position) } => {
            client.projection_set_checkpoint(projection, *position)?;
            print_json(&serde_json::json!({ "position": position }))
        }
        ProjectionCommand::Checkpoint { projection, set: None } => {
            print_json(&serde_json::json!({ "position": client.projection_checkpoint(projection)? }))
        }
    }
}

fn append(client: &mut Client, args: &AppendArgs) -> anyhow::Result<()> {
    let events = match &args.event_type {
        Some(event_type) => {
            let data = RawValue::from_string(args.data.clone()).context("--data is not valid JSON")?;
            let metadata = match &args.metadata {
                Some(m) => Some(RawValue::from_string(m.clone()).context("--metadata is not valid JSON")?),
                None => None,
            };
            vec![Event { event_type: event_type.clone(), data, tags: args.tags.clone(), metadata, id: args.id }]
        }
        None => {
            if io::stdin().is_terminal() {
                eprintln!(
                    "opossum append: no --type given, so reading events from stdin, one JSON object per line:\n  \
                     {{\"type\":\"StudentRegistered\",\"data\":{{\"name\":\"Ada\"}},\"tags\":[{{\"key\":\"studentId\",\"value\":\"42\"}}]}}\n\
                     End with Ctrl-D (all lines are appended as one atomic request), or Ctrl-C to cancel.\n\
                     For one event, use: opossum append --type TYPE --data JSON --tag KEY=VALUE"
                );
            }
            let mut events = Vec::new();
            for (n, line) in io::stdin().lock().lines().enumerate() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                events.push(parse_event_line(&line).with_context(|| format!("stdin line {}", n + 1))?);
            }
            if events.is_empty() {
                bail!("no events on stdin: nothing to append");
            }
            events
        }
    };
    let condition = if let Some(text) = &args.condition {
        Some(serde_json::from_str::<AppendCondition>(text).context("--condition")?)
    } else if !args.fail_if_types.is_empty() || !args.fail_if_tags.is_empty() {
        let item = QueryItem::new(args.fail_if_types.clone(), args.fail_if_tags.clone())?;
        Some(AppendCondition { fail_if_events_match: Query::items(vec![item])?, after: args.after })
    } else {
        if args.after.is_some() {
            bail!("--after needs --fail-if-type or --fail-if-tag");
        }
        None
    };
    print_json(&client.append_tracked(events, condition, args.tracking.as_ref())?)
}

fn progress(len: u64, template: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_bar()));
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `read` and `export`: NDJSON of `SequencedEvent`s; export shows progress by position.
fn subscribe(socket: &std::path::Path, args: &SubscribeArgs) -> anyhow::Result<()> {
    use opossum::client::{Subscription, SubscriptionMessage};
    let query_args = QueryArgs {
        types: args.types.clone(),
        tags: args.tags.clone(),
        query: args.query.clone(),
        after: None,
        before: None,
        limit: None,
        backwards: false,
    };
    let mut subscription = Subscription::new(socket, query_args.query()?, args.after)
        .reconnect_for(Duration::from_secs(args.reconnect_secs));
    let mut out = io::stdout().lock();
    loop {
        match subscription.next_message()? {
            SubscriptionMessage::Event(event) => {
                serde_json::to_writer(&mut out, &event)?;
                out.write_all(b"\n")?;
                out.flush()?;
            }
            SubscriptionMessage::Heartbeat { .. } if args.stop_at_head => return Ok(()),
            SubscriptionMessage::Heartbeat { .. } => {}
        }
    }
}

fn export(client: &mut Client, args: &QueryArgs, file: &PathBuf, show_progress: bool) -> anyhow::Result<()> {
    let query = args.query()?;
    let head = client.head()?;
    let out: Box<dyn Write> = if file.as_os_str() == "-" {
        Box::new(io::stdout().lock())
    } else {
        Box::new(File::create(file).with_context(|| format!("creating {}", file.display()))?)
    };
    let mut out = BufWriter::with_capacity(1 << 20, out);
    let bar = if show_progress && head > 0 {
        progress(head, "{spinner} exporting [{bar:40}] position {pos}/{len} {per_sec} ({eta})")
    } else {
        ProgressBar::hidden()
    };
    let mut count = 0u64;
    let mut stream = client.read(&query, args.options())?;
    for event in stream.by_ref() {
        let event = event?;
        serde_json::to_writer(&mut out, &event)?;
        out.write_all(b"\n")?;
        count += 1;
        if count.is_multiple_of(1024) {
            bar.set_position(if args.backwards { head - event.position } else { event.position });
        }
    }
    out.flush()?;
    bar.finish_and_clear();
    if show_progress {
        let done = stream.done().map_or(head, |d| d.head);
        eprintln!("exported {count} events (store head {done})");
    }
    Ok(())
}

fn import(client: &mut Client, args: &ImportArgs) -> anyhow::Result<()> {
    if args.batch == 0 {
        bail!("--batch must be at least 1");
    }
    let (input, len): (Box<dyn Read>, u64) = if args.file.as_os_str() == "-" {
        (Box::new(io::stdin().lock()), 0)
    } else {
        let f = File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
        let len = f.metadata()?.len();
        (Box::new(f), len)
    };
    let bar = if len > 0 {
        progress(len, "{spinner} importing [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec} ({eta}) {msg}")
    } else {
        progress(0, "{spinner} importing {msg}")
    };
    let mut reader = BufReader::with_capacity(1 << 20, input);
    let mut batch = Vec::with_capacity(args.batch);
    // Lines up to `done_lines` are imported (or skipped); the batch holds the events of the lines after it.
    let (mut line, mut line_no, mut imported, mut done_lines) = (String::new(), 0u64, 0u64, args.skip_lines);
    let file = args.file.display().to_string();
    let stopped = |imported: u64, done_lines: u64, why: anyhow::Error| -> anyhow::Error {
        bar.finish_and_clear();
        let file = if file == "-" { "-".to_string() } else { file.clone() };
        why.context(format!(
            "import stopped: {imported} events imported from lines {}..={done_lines} (each batch is atomic: nothing \
             after line {done_lines} was written); after fixing the input, resume with: opossum import {file} \
             --skip-lines {done_lines}",
            args.skip_lines + 1
        ))
    };
    loop {
        line.clear();
        let n = reader.read_line(&mut line).map_err(|e| stopped(imported, done_lines, e.into()))?;
        if n == 0 {
            break;
        }
        line_no += 1;
        bar.inc(n as u64);
        if line_no <= args.skip_lines || line.trim().is_empty() {
            if batch.is_empty() {
                done_lines = done_lines.max(line_no);
            }
            continue;
        }
        let event = parse_event_line(&line)
            .with_context(|| format!("line {line_no}: not an event"))
            .map_err(|e| stopped(imported, done_lines, e))?;
        batch.push(event);
        if batch.len() >= args.batch {
            let n = batch.len() as u64;
            client
                .append(std::mem::take(&mut batch), None)
                .with_context(|| format!("the batch of lines {}..={line_no}", done_lines + 1))
                .map_err(|e| stopped(imported, done_lines, e))?;
            imported += n;
            done_lines = line_no;
            bar.set_message(format!("{imported} events"));
        }
    }
    if !batch.is_empty() {
        let n = batch.len() as u64;
        client
            .append(std::mem::take(&mut batch), None)
            .with_context(|| format!("the batch of lines {}..={line_no}", done_lines + 1))
            .map_err(|e| stopped(imported, done_lines, e))?;
        imported += n;
    }
    bar.finish_and_clear();
    print_json(&serde_json::json!({ "imported": imported, "head": client.head()? }))
}
