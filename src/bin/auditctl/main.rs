//! auditctl: the command-line client. Ingest NDJSON, search, get one event,
//! generate sample events, drive a daemon with load (`load.rs`), count
//! events by values and time (`analysis.rs`), and follow or export them
//! (`streams.rs`).

mod analysis;
mod bench_analysis;
mod bench_search;
mod integrity;
mod load;
mod retention;
mod streams;
mod subject;

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use auditd::client::{BearerToken, Client};
use auditd::json::JsonEvent;
use auditd::proto::tokens_client::TokensClient;
use auditd::proto::{
    AuditEvent, CreateTokenRequest, EventFilter, GetEventRequest, IngestRequest, IngestResponse,
    ListTokensRequest, Outcome, RevokeTokenRequest, SearchRequest, TokenInfo, TokenKind, WaitFor,
};
use clap::{Parser, Subcommand, ValueEnum};
use tonic::transport::{Channel, Endpoint};

/// The daemon's allocator: `auditctl load` shares the machine with the daemon
/// it measures, so its own allocations should cost as little.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(version, about = "auditctl: the auditd command-line client")]
struct Cli {
    /// The daemon's gRPC address.
    #[arg(
        long,
        env = "AUDITCTL_ADDR",
        default_value = "http://127.0.0.1:50051",
        global = true
    )]
    addr: String,
    /// Bearer token. Default: the admin token auditd wrote on first start
    /// to <data-dir>/admin.token.
    #[arg(long, env = "AUDITCTL_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// The daemon's data directory, where its first admin token is.
    #[arg(
        long,
        env = "AUDITCTL_DATA_DIR",
        default_value = "./data",
        global = true
    )]
    data_dir: PathBuf,
    /// PEM CA certificate to trust for an https:// address (a private CA).
    #[arg(long, env = "AUDITCTL_TLS_CA", global = true)]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for a daemon that requires mutual TLS.
    #[arg(long, global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Ingest an NDJSON file of events (the JSON form; `-` reads stdin).
    Ingest(IngestArgs),
    /// Search events; every filter is optional and they are AND-ed.
    Search(Box<SearchArgs>),
    /// Count the events a filter matches: top values of a field (--terms),
    /// events per time bucket (--histogram), distinct values
    /// (--cardinality), and the same inside each bucket (--sub).
    Aggregate(Box<analysis::AggregateArgs>),
    /// Follow the events a filter matches as they are stored, one a line,
    /// until Ctrl-C; a dropped stream resumes where it ended.
    Tail(Box<streams::TailArgs>),
    /// Write every event a filter matches in a format a SIEM reads (OCSF,
    /// ECS, CEF, CSV, NDJSON), resuming after a dropped connection.
    Export(Box<streams::ExportArgs>),
    /// Print one event by id.
    Get {
        id: String,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
    },
    /// Write deterministic sample events as NDJSON to stdout.
    Gen(GenArgs),
    /// Drive the daemon with load and report events/s, MB/s, acknowledgement
    /// latency and time to searchable (a benchmark; see BENCHMARKS.md).
    Load(Box<load::LoadArgs>),
    /// Time a seeded random mix of search shapes (each filter, pairs, a
    /// day, free text, query strings, paging, limits, scoped) with values
    /// drawn from the data; report p50/p99/max per shape (BENCHMARKS.md).
    BenchSearch(bench_search::BenchSearchArgs),
    /// Time the analysis questions of BENCHMARKS.md (count by action over a
    /// day, top 10 addresses, failures per hour of one access over 30 days).
    BenchAggregate(bench_analysis::BenchAggregateArgs),
    /// Follow everything for a while and report how long after acceptance
    /// each event arrived (run it while something ingests).
    BenchTail(bench_analysis::BenchTailArgs),
    /// Manage tokens (needs an admin token).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print an event's receipt: its inclusion proof in the Merkle log, a
    /// C2SP tlog-proof that anyone can check offline (`> e.proof`).
    Receipt(integrity::ReceiptArgs),
    /// Check a receipt offline: the checkpoint's signature, the path to
    /// its root, and (with --event) that the leaf is this event.
    VerifyReceipt(integrity::VerifyReceiptArgs),
    /// Check the log: --since FILE (signed and consistent with a saved
    /// checkpoint, which it then replaces: catches a rollback or a fork),
    /// --full (every leaf recomputed from the stored events).
    Verify(integrity::VerifyArgs),
    /// Time inclusion proofs of random events (a benchmark; BENCHMARKS.md).
    BenchProof(integrity::BenchProofArgs),
    /// Retention: the rules in force, the compliance floor, a sweep now
    /// (needs an admin token).
    #[command(subcommand)]
    Retention(retention::RetentionCommand),
    /// Legal holds: days holding a matching event are not dropped while
    /// a hold stands (needs an admin token).
    #[command(subcommand)]
    Hold(retention::HoldCommand),
    /// The data subject's rights: export (Art. 15) of a subject's events
    /// with their receipts and a report (an admin token, or the subject's
    /// personal token).
    #[command(subcommand)]
    Subject(subject::SubjectCommand),
}

#[derive(Subcommand, Debug)]
enum TokenCommand {
    /// Create a token and print its secret (shown once).
    Create {
        #[arg(long, value_enum)]
        kind: KindArg,
        /// A name to recognise it by.
        #[arg(long, default_value = "")]
        name: String,
        /// personal, app, shared: whose events it reads.
        #[arg(long, default_value = "")]
        subject: String,
        /// app, shared: the access whose events it reads.
        #[arg(long, default_value = "")]
        access_id: String,
        /// ingest: a source name it may write (repeatable; none: any).
        #[arg(long = "source")]
        sources: Vec<String>,
        /// ingest: the prefix every event type it writes must have.
        #[arg(long, default_value = "")]
        type_prefix: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id; takes effect at once.
    Revoke { id: String },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum KindArg {
    Admin,
    Personal,
    App,
    Shared,
    Ingest,
}

#[derive(clap::Args, Debug, Clone)]
struct IngestArgs {
    file: PathBuf,
    /// Events per batch.
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Return once every batch is durable, without waiting for the last
    /// ones to become searchable.
    #[arg(long)]
    no_wait: bool,
    /// No progress bar (a summary line is still printed).
    #[arg(long)]
    quiet: bool,
}

/// The filter flags of `search`, `aggregate`, `tail` and `export`: every
/// one is optional and they are AND-ed; the values of one repeated flag
/// are OR-ed.
#[derive(clap::Args, Debug, Default, Clone)]
struct FilterArgs {
    /// Action, exact or a prefix ending in `*` (repeatable; OR-ed).
    #[arg(long = "action")]
    actions: Vec<String>,
    #[arg(long = "access-id")]
    access_ids: Vec<String>,
    #[arg(long = "subject")]
    subjects: Vec<String>,
    /// An address or a CIDR block.
    #[arg(long = "ip")]
    ips: Vec<String>,
    #[arg(long)]
    status_min: Option<i32>,
    #[arg(long)]
    status_max: Option<i32>,
    #[arg(long, value_enum)]
    outcome: Option<OutcomeArg>,
    #[arg(long = "type")]
    types: Vec<String>,
    #[arg(long = "source-name")]
    source_names: Vec<String>,
    /// From this time, inclusive: seconds since the epoch or RFC 3339.
    #[arg(long)]
    from: Option<String>,
    /// Up to this time, exclusive.
    #[arg(long)]
    to: Option<String>,
    /// Free text; every word must match.
    #[arg(long)]
    text: Option<String>,
    /// Tantivy query syntax over named fields.
    #[arg(long)]
    query: Option<String>,
}

impl FilterArgs {
    /// The `EventFilter` these flags say; `Err` for a time that is neither
    /// seconds since the epoch nor RFC 3339.
    fn to_filter(&self) -> anyhow::Result<EventFilter> {
        Ok(EventFilter {
            from_time: self
                .from
                .as_deref()
                .map(parse_time)
                .transpose()
                .context("--from")?,
            to_time: self
                .to
                .as_deref()
                .map(parse_time)
                .transpose()
                .context("--to")?,
            actions: self.actions.clone(),
            access_ids: self.access_ids.clone(),
            subjects: self.subjects.clone(),
            ips: self.ips.clone(),
            status_min: self.status_min,
            status_max: self.status_max,
            outcome: match self.outcome {
                None => Outcome::Any,
                Some(OutcomeArg::Success) => Outcome::Success,
                Some(OutcomeArg::Failure) => Outcome::Failure,
            } as i32,
            types: self.types.clone(),
            source_names: self.source_names.clone(),
            text: self.text.clone().unwrap_or_default(),
            query: self.query.clone().unwrap_or_default(),
        })
    }
}

#[derive(clap::Args, Debug, Default, Clone)]
struct SearchArgs {
    #[command(flatten)]
    filter: FilterArgs,
    #[arg(long, default_value_t = 20)]
    limit: u32,
    /// Oldest first.
    #[arg(long)]
    ascending: bool,
    /// Continue from a previous page.
    #[arg(long)]
    page_token: Option<String>,
    /// Follow every page to the end.
    #[arg(long)]
    all: bool,
    /// Count every match, past the server's `exact_total_hits`.
    #[arg(long)]
    exact_total: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum OutcomeArg {
    Success,
    Failure,
}

#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq)]
enum Format {
    #[default]
    Table,
    /// One JSON event per line.
    Json,
    /// One id per line.
    Ids,
}

#[derive(clap::Args, Debug, Clone)]
struct GenArgs {
    #[arg(long, default_value_t = 100_000)]
    count: u64,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    #[arg(long, default_value_t = 5_000)]
    accesses: usize,
    #[arg(long, default_value_t = 2_000)]
    subjects: usize,
    #[arg(long, default_value_t = 20_000)]
    addresses: usize,
    /// Time of the first event, seconds since the epoch.
    #[arg(long, default_value_t = 1_700_000_000.0)]
    start: f64,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    auditd::allocator::keep_huge_pages_off();
    let cli = parse_cli();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // One line with its causes; no backtrace for a user's mistake.
            eprintln!("auditctl: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The command line, with what the derive cannot see: the order in which
/// `aggregate`'s aggregations were given (`--sub` goes inside the first).
fn parse_cli() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let matches = Cli::command().get_matches();
    let mut cli =
        Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.format(&mut Cli::command()).exit());
    if let (Command::Aggregate(args), Some(("aggregate", sub))) =
        (&mut cli.command, matches.subcommand())
    {
        args.note_order(sub);
    }
    cli
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let bearer = || bearer(&cli);
    let endpoint = || endpoint(&cli);
    match &cli.command {
        Command::Gen(args) => gen(args.clone()),
        Command::Load(args) => load::load(endpoint()?, bearer()?, (**args).clone()).await,
        Command::BenchSearch(args) => {
            bench_search::bench_search(endpoint()?, bearer()?, args.clone()).await
        }
        Command::BenchAggregate(args) => {
            let client = connect(&endpoint()?, bearer()?).await?;
            bench_analysis::bench_aggregate(client, args.clone()).await
        }
        Command::BenchTail(args) => {
            let client = connect(&endpoint()?, bearer()?).await?;
            bench_analysis::bench_tail(client, args.clone()).await
        }
        Command::Ingest(args) => {
            ingest(connect(&endpoint()?, bearer()?).await?, args.clone()).await
        }
        Command::Search(args) => {
            search(connect(&endpoint()?, bearer()?).await?, (**args).clone()).await
        }
        Command::Aggregate(args) => {
            // Bad flags fail before anything is sent.
            let request = args.request()?;
            let client = connect(&endpoint()?, bearer()?).await?;
            analysis::aggregate(client, request, args.format).await
        }
        Command::Tail(args) => {
            let filter = args.filter.to_filter()?;
            let client = connect(&endpoint()?, bearer()?).await?;
            streams::tail(client, filter, args).await
        }
        Command::Export(args) => {
            let filter = args.filter.to_filter()?;
            let client = connect(&endpoint()?, bearer()?).await?;
            streams::export(client, filter, args).await
        }
        Command::Token(command) => tokens(&endpoint()?, bearer()?, command).await,
        Command::Receipt(args) => {
            let client = auditd::client::integrity(channel(&endpoint()?).await?, bearer()?);
            integrity::receipt(client, args.clone()).await
        }
        Command::VerifyReceipt(args) => integrity::verify_receipt_file(args),
        Command::BenchProof(args) => {
            let client = auditd::client::integrity(channel(&endpoint()?).await?, bearer()?);
            integrity::bench_proof(client, args.clone()).await
        }
        Command::Retention(command) => {
            let client = auditd::client::retention(channel(&endpoint()?).await?, bearer()?);
            retention::retention(client, command).await
        }
        Command::Subject(command) => {
            let client = auditd::client::subjects(channel(&endpoint()?).await?, bearer()?);
            subject::subject(client, command).await
        }
        Command::Hold(command) => {
            let client = auditd::client::retention(channel(&endpoint()?).await?, bearer()?);
            retention::hold(client, command).await
        }
        Command::Verify(args) => {
            let client = auditd::client::integrity(channel(&endpoint()?).await?, bearer()?);
            integrity::verify_log(client, &cli.data_dir, args).await
        }
        Command::Get { id, format } => {
            let (id, format) = (id.clone(), *format);
            let mut client = connect(&endpoint()?, bearer()?).await?;
            let event = client
                .get_event(GetEventRequest { id })
                .await
                .map_err(status_error)?
                .into_inner();
            let mut out = std::io::stdout().lock();
            print_events(&mut out, &[event], format)?;
            Ok(())
        }
    }
}

/// `--token`, else `AUDITCTL_TOKEN`, else the first admin token file.
fn bearer(cli: &Cli) -> anyhow::Result<BearerToken> {
    let token = match &cli.token {
        Some(token) => token.clone(),
        None => {
            let file = cli.data_dir.join(auditd::auth::ADMIN_TOKEN_FILE);
            std::fs::read_to_string(&file).with_context(|| {
                format!("no token: pass --token or AUDITCTL_TOKEN, or run where auditd's data directory is ({} not readable)", file.display())
            })?
        }
    };
    BearerToken::new(&token)
        .map_err(|_| anyhow::anyhow!("the token has characters a header cannot carry"))
}

/// Where and how to connect: TLS when a CA or client certificate is given.
fn endpoint(cli: &Cli) -> anyhow::Result<Endpoint> {
    let tls = auditd::client::ClientTls {
        ca: cli.tls_ca.as_deref(),
        identity: cli.tls_cert.as_deref().zip(cli.tls_key.as_deref()),
    };
    Ok(auditd::client::endpoint(&cli.addr, &tls)?)
}

pub(crate) async fn channel(endpoint: &Endpoint) -> anyhow::Result<Channel> {
    endpoint
        .connect()
        .await
        .with_context(|| format!("cannot reach auditd at {} (is it running?)", endpoint.uri()))
}

async fn connect(endpoint: &Endpoint, bearer: BearerToken) -> anyhow::Result<Client> {
    Ok(auditd::client::audit_log(channel(endpoint).await?, bearer))
}

async fn tokens(
    endpoint: &Endpoint,
    bearer: BearerToken,
    command: &TokenCommand,
) -> anyhow::Result<()> {
    let mut client = TokensClient::with_interceptor(channel(endpoint).await?, bearer);
    let print = |t: &TokenInfo| {
        let kind = TokenKind::try_from(t.kind).map_or("?", |k| k.as_str_name());
        println!(
            "{:<26} {:<20} {:<8} subject={:?} access_id={:?} name={:?}{}",
            t.id,
            kind.trim_start_matches("TOKEN_KIND_").to_lowercase(),
            if t.revoked { "revoked" } else { "active" },
            t.subject,
            t.access_id,
            t.name,
            if t.sources.is_empty() && t.type_prefix.is_empty() {
                String::new()
            } else {
                format!(" sources={:?} type_prefix={:?}", t.sources, t.type_prefix)
            }
        );
    };
    match command {
        TokenCommand::Create {
            kind,
            name,
            subject,
            access_id,
            sources,
            type_prefix,
        } => {
            let kind = match kind {
                KindArg::Admin => TokenKind::Admin,
                KindArg::Personal => TokenKind::Personal,
                KindArg::App => TokenKind::App,
                KindArg::Shared => TokenKind::Shared,
                KindArg::Ingest => TokenKind::Ingest,
            };
            let reply = client
                .create_token(CreateTokenRequest {
                    kind: kind as i32,
                    name: name.clone(),
                    subject: subject.clone(),
                    access_id: access_id.clone(),
                    sources: sources.clone(),
                    type_prefix: type_prefix.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            if let Some(token) = &reply.token {
                eprint!("created: ");
                eprintln!("{} (the secret below is shown once)", token.id);
            }
            println!("{}", reply.secret);
        }
        TokenCommand::List => {
            let reply = client
                .list_tokens(ListTokensRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            reply.tokens.iter().for_each(print);
        }
        TokenCommand::Revoke { id } => {
            let reply = client
                .revoke_token(RevokeTokenRequest { id: id.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            print(&reply);
        }
    }
    Ok(())
}

fn status_error(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

fn gen(args: GenArgs) -> anyhow::Result<()> {
    let opts = auditd::client::gen::GenOptions {
        count: args.count,
        seed: args.seed,
        accesses: args.accesses,
        subjects: args.subjects,
        addresses: args.addresses,
        start: args.start,
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    match auditd::client::gen::write_ndjson(&opts, &mut out).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other.map(|_| ())?),
    }
}

/// Reads the file on a blocking thread, `concurrency` tasks send batches;
/// a batch that meets RESOURCE_EXHAUSTED or UNAVAILABLE is retried with its
/// batch id, so a retry never stores anything twice.
async fn ingest(client: Client, args: IngestArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 || args.concurrency == 0 {
        bail!("--batch-size and --concurrency must be at least 1");
    }
    let total_bytes = if args.file.as_os_str() == "-" {
        0
    } else {
        std::fs::metadata(&args.file)
            .with_context(|| format!("reading {}", args.file.display()))?
            .len()
    };
    let progress = if args.quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(total_bytes)
    };
    progress.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} [{elapsed_precise}, eta {eta}]",
        )
        .expect("a valid template"),
    );
    let (tx, rx) = tokio::sync::mpsc::channel::<(u64, Vec<AuditEvent>, u64)>(args.concurrency * 2);
    let file = args.file.clone();
    let batch_size = args.batch_size;
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let input: Box<dyn BufRead> = if file.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::with_capacity(
                1 << 20,
                std::fs::File::open(&file)
                    .with_context(|| format!("opening {}", file.display()))?,
            ))
        };
        let mut batch = Vec::with_capacity(batch_size);
        let mut bytes = 0u64;
        let mut number = 0u64;
        for (n, line) in input.lines().enumerate() {
            let line = line.with_context(|| format!("reading line {}", n + 1))?;
            bytes += line.len() as u64 + 1;
            if line.trim().is_empty() {
                continue;
            }
            let event = JsonEvent::parse(&line)
                .and_then(JsonEvent::into_proto)
                .with_context(|| format!("line {}", n + 1))?;
            batch.push(event);
            if batch.len() == batch_size {
                number += 1;
                if tx
                    .blocking_send((number, std::mem::take(&mut batch), bytes))
                    .is_err()
                {
                    return Ok(());
                }
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            let _ = tx.blocking_send((number + 1, batch, bytes));
        }
        Ok(())
    });

    let run_id = ulid::Ulid::new().to_string();
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let events = Arc::new(AtomicU64::new(0));
    let sent_bytes = Arc::new(AtomicU64::new(0));
    let last_sent: Arc<std::sync::Mutex<Option<IngestRequest>>> = Arc::default();
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.concurrency {
        let (rx, events, sent_bytes, progress) = (
            rx.clone(),
            events.clone(),
            sent_bytes.clone(),
            progress.clone(),
        );
        let last_sent = last_sent.clone();
        let mut client = client.clone();
        let run_id = run_id.clone();
        workers.push(tokio::spawn(async move {
            loop {
                let next = rx.lock().await.recv().await;
                let Some((number, batch, bytes)) = next else {
                    return Ok::<(), anyhow::Error>(());
                };
                let count = batch.len() as u64;
                let request = IngestRequest {
                    events: batch,
                    batch_id: format!("{run_id}-{number}"),
                    wait_for: WaitFor::Durable as i32,
                };
                send_with_retry(&mut client, &request)
                    .await
                    .with_context(|| format!("batch {number}"))?;
                *last_sent.lock().expect("lock") = Some(request);
                let done = events.fetch_add(count, Ordering::Relaxed) + count;
                sent_bytes.fetch_add(bytes, Ordering::Relaxed);
                progress.inc(bytes);
                progress.set_message(format!("{done} events"));
            }
        }));
    }
    let mut result = Ok(());
    for worker in workers {
        if let Err(e) = worker.await? {
            result = Err(e);
        }
    }
    drop(rx);
    let read = reader.await?;
    progress.finish_and_clear();
    result?;
    read?;
    let seconds = started.elapsed().as_secs_f64();
    let events = events.load(Ordering::Relaxed);
    let mb = sent_bytes.load(Ordering::Relaxed) as f64 / 1e6;
    println!(
        "ingested {events} events ({mb:.1} MB of NDJSON), durable in {seconds:.2} s: {:.0} events/s, {:.1} MB/s",
        events as f64 / seconds,
        mb / seconds
    );
    // A retry of a stored batch with WAIT_FOR_SEARCHABLE stores nothing and
    // returns once everything durable is searchable.
    let last = last_sent.lock().expect("lock").take();
    if let (false, Some(last)) = (args.no_wait, last) {
        let waited = wait_searchable(&mut client.clone(), &last)
            .await
            .context("waiting until searchable")?;
        match waited {
            true => println!(
                "all searchable after {:.2} s",
                started.elapsed().as_secs_f64()
            ),
            false => println!("{NO_SEARCHABLE_WAIT}"),
        }
    }
    Ok(())
}

/// What `load` and `ingest` say when the node cannot wait for searchability.
pub(crate) const NO_SEARCHABLE_WAIT: &str = "durable; this node does not wait until events are \
    searchable (a node of an older cluster of several partitions)";

/// Sends `last` (a batch already stored) again with WAIT_FOR_SEARCHABLE:
/// it stores nothing and returns once everything durable is searchable
/// (`true`). `false`: the node cannot wait (a node of a cluster of several
/// partitions refuses SEARCHABLE with FAILED_PRECONDITION).
pub(crate) async fn wait_searchable(
    client: &mut Client,
    last: &IngestRequest,
) -> anyhow::Result<bool> {
    let mut last = last.clone();
    last.wait_for = WaitFor::Searchable as i32;
    match client.ingest(last.clone()).await {
        Ok(_) => return Ok(true),
        Err(status) if status.code() == tonic::Code::FailedPrecondition => return Ok(false),
        Err(_) => {}
    }
    send_with_retry(client, &last).await?;
    Ok(true)
}

/// Most attempts for one batch before giving up.
const MAX_ATTEMPTS: u32 = 50;

/// Sends `request`, retrying refusals after the server's hint; returns the
/// reply and how many retries it took.
async fn send_with_retry(
    client: &mut Client,
    request: &IngestRequest,
) -> anyhow::Result<(IngestResponse, u32)> {
    retry(|| {
        let (mut client, request) = (client.clone(), request.clone());
        async move { client.ingest(request).await }
    })
    .await
}

/// Runs `call` until it succeeds, retrying refusals (RESOURCE_EXHAUSTED,
/// UNAVAILABLE, ABORTED) after the server's hint, at most `MAX_ATTEMPTS`
/// times; returns the reply and how many retries it took.
async fn retry<F, Fut>(mut call: F) -> anyhow::Result<(IngestResponse, u32)>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<IngestResponse>, tonic::Status>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(reply) => return Ok((reply.into_inner(), attempt - 1)),
            Err(status)
                if attempt < MAX_ATTEMPTS
                    && matches!(
                        status.code(),
                        tonic::Code::ResourceExhausted
                            | tonic::Code::Unavailable
                            | tonic::Code::Aborted
                    ) =>
            {
                let hint = status
                    .metadata()
                    .get(auditd::grpc::RETRY_AFTER_MS)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(100u64);
                tokio::time::sleep(Duration::from_millis(hint.min(5_000))).await;
            }
            Err(status) => return Err(status_error(status)),
        }
    }
}

async fn search(mut client: Client, args: SearchArgs) -> anyhow::Result<()> {
    let filter = args.filter.to_filter()?;
    let mut request = SearchRequest {
        limit: args.limit,
        ascending: args.ascending,
        page_token: args.page_token.unwrap_or_default(),
        exact_total: args.exact_total,
        ..auditd::search::request_of(filter)
    };
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let mut first = true;
    loop {
        let page = client
            .search(request.clone())
            .await
            .map_err(status_error)?
            .into_inner();
        if first {
            match page.total_hits_is_lower_bound {
                true => eprintln!("at least {} matching events", page.total_hits),
                false => eprintln!("{} matching events", page.total_hits),
            }
            if args.format == Format::Table {
                table_header(&mut out)?;
            }
            first = false;
        }
        print_events(&mut out, &page.events, args.format)?;
        if page.next_page_token.is_empty() {
            break;
        }
        if !args.all {
            out.flush()?;
            eprintln!("more: --page-token {}", page.next_page_token);
            break;
        }
        request.page_token = page.next_page_token;
    }
    out.flush()?;
    Ok(())
}

/// RFC 3339 in UTC with exactly three digits of milliseconds, so the
/// table's columns line up (`2023-11-14T22:14:59.720Z`).
const TABLE_TIME: &[time::format_description::FormatItem<'static>] = time::macros::format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
);

/// The header row of `Format::Table`.
fn table_header(out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<22} {:>6} {:<14} {:<26} {:<24} ID",
        "TIME", "ACTION", "STATUS", "SUBJECT", "ACCESS", "IP"
    )
}

fn print_events(out: &mut impl Write, events: &[AuditEvent], format: Format) -> anyhow::Result<()> {
    for event in events {
        match format {
            Format::Ids => writeln!(out, "{}", event.id)?,
            Format::Json => writeln!(
                out,
                "{}",
                serde_json::to_string(&JsonEvent::from_proto(event.clone()))?
            )?,
            Format::Table => {
                let time = event
                    .time
                    .as_ref()
                    .and_then(|t| {
                        time::OffsetDateTime::from_unix_timestamp_nanos(
                            i128::from(t.seconds) * 1_000_000_000 + i128::from(t.nanos),
                        )
                        .ok()
                    })
                    .and_then(|t| t.format(TABLE_TIME).ok())
                    .unwrap_or_default();
                let ip = event.source.as_ref().map_or("", |s| s.ip.as_str());
                writeln!(
                    out,
                    "{:<24} {:<22} {:>6} {:<14} {:<26} {:<24} {}",
                    time, event.action, event.status, event.subject, event.access_id, ip, event.id
                )?;
            }
        }
    }
    Ok(())
}

/// Seconds since the epoch (`1700000000.5`) or RFC 3339.
fn parse_time(value: &str) -> anyhow::Result<prost_types::Timestamp> {
    auditd::json::parse_time(value).map_err(anyhow::Error::msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_times_have_three_digits_of_milliseconds() {
        let at = |seconds: i64, nanos: i32| {
            let mut out = Vec::new();
            let event = AuditEvent {
                time: Some(prost_types::Timestamp { seconds, nanos }),
                ..Default::default()
            };
            print_events(&mut out, &[event], Format::Table).unwrap();
            String::from_utf8(out).unwrap()[..24].to_owned()
        };
        assert_eq!(at(1_700_000_099, 720_000_000), "2023-11-14T22:14:59.720Z");
        assert_eq!(at(1_700_000_099, 0), "2023-11-14T22:14:59.000Z");
        assert_eq!(at(1_700_000_099, 5_900_000), "2023-11-14T22:14:59.005Z");
    }
}
