//! `auditctl tail` and `auditctl export`: the two streaming reads, each
//! resumed where it ended when the stream breaks.
//!
//! Both keep the last resume token the daemon sent (a TailResponse's, or
//! the last ExportChunk's that had one) and, when the stream ends with an
//! error a retry can pass (UNAVAILABLE at shutdown, ABORTED for a stalled
//! reader, a dropped connection, ...), call again with it after a pause:
//! 100 ms, doubling up to 5 s, back to 100 ms after a response. Without a
//! token of their own yet they take the one the error's message ends with
//! (`resume with resume_token <token>`). An error the caller must fix
//! (INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED, ...) ends the
//! command. `tail` retries for as long as it runs (until Ctrl-C);
//! `export` gives up after `EXPORT_ATTEMPTS` failed attempts in a row.

use std::fmt;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use auditd::formats::Format as FileFormat;
use auditd::proto::{EventFilter, ExportRequest, TailRequest};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use tonic::{Code, Status};

use crate::{print_events, status_error, table_header, Client, FilterArgs, Format};

#[derive(clap::Args, Debug, Clone)]
pub struct TailArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// As `search` prints events: a table, JSON lines (the NDJSON of
    /// `auditctl ingest`) or ids.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    format: Format,
}

#[derive(clap::Args, Debug, Clone)]
pub struct ExportArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// ndjson (auditd's JSON form, what `auditctl ingest` reads), ocsf
    /// (OCSF API Activity), ecs (Elastic Common Schema), cef (ArcSight) or
    /// csv (RFC 4180, with a header row).
    #[arg(long, value_parser = file_format())]
    format: FileFormat,
    /// Write to FILE instead of stdout, with a progress bar on stderr and
    /// the number of events written at the end.
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: Option<PathBuf>,
    /// Oldest first (default: newest first).
    #[arg(long)]
    ascending: bool,
}

pub(crate) fn file_format() -> impl TypedValueParser<Value = FileFormat> {
    PossibleValuesParser::new(FileFormat::ALL.map(FileFormat::name))
        .try_map(|name| FileFormat::parse(&name).ok_or("not an export format"))
}

/// Failed attempts in a row after which `export` gives up.
pub const EXPORT_ATTEMPTS: u32 = 10;

/// The pause before each new attempt: `FIRST`, doubling up to `MAX`, back
/// to `FIRST` after a response; `None` once `limit` attempts in a row
/// have failed.
#[derive(Debug)]
struct Backoff {
    next: Duration,
    failures: u32,
    limit: Option<u32>,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(5);

    fn new(limit: Option<u32>) -> Backoff {
        Backoff {
            next: Self::FIRST,
            failures: 0,
            limit,
        }
    }

    /// A response came: the next failure starts over.
    fn reset(&mut self) {
        self.next = Self::FIRST;
        self.failures = 0;
    }

    /// An attempt failed: how long to wait before the next one, if any.
    fn failed(&mut self) -> Option<Duration> {
        self.failures += 1;
        if self.limit.is_some_and(|limit| self.failures >= limit) {
            return None;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(wait)
    }
}

/// Whether a stream error ends the command: something the caller must
/// fix, which a retry would only meet again.
fn fatal(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::Unimplemented
            | Code::AlreadyExists
            | Code::DataLoss
    )
}

/// The token a stream error's message ends with (`... resume with
/// resume_token <token>`).
fn token_in(status: &Status) -> Option<&str> {
    let (_, token) = status.message().rsplit_once("resume_token ")?;
    let token = token.trim();
    (!token.is_empty() && !token.contains(char::is_whitespace)).then_some(token)
}

/// Why a stream ended.
enum Ended {
    Status(Status),
    /// Ended without an error, which a tail never does on its own.
    Closed,
}

impl fmt::Display for Ended {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ended::Status(status) => write!(f, "{:?}: {}", status.code(), status.message()),
            Ended::Closed => f.write_str("the daemon closed it"),
        }
    }
}

fn broken_pipe(error: &std::io::Error) -> bool {
    error.kind() == std::io::ErrorKind::BrokenPipe
}

/// Follows `filter` until Ctrl-C (exit 0), a fatal error, or a closed
/// stdout (exit 0, as `auditctl tail | head` wants).
pub async fn tail(client: Client, filter: EventFilter, args: &TailArgs) -> anyhow::Result<()> {
    let follow = follow(client, filter, args.format);
    tokio::pin!(follow);
    tokio::select! {
        result = &mut follow => result,
        // A signal handler that cannot be installed disables this branch.
        Ok(()) = tokio::signal::ctrl_c() => Ok(()),
    }
}

async fn follow(mut client: Client, filter: EventFilter, format: Format) -> anyhow::Result<()> {
    let mut out = BufWriter::new(std::io::stdout());
    let mut token = String::new();
    let mut backoff = Backoff::new(None);
    let mut following = false;
    loop {
        let request = TailRequest {
            filter: Some(filter.clone()),
            resume_token: token.clone(),
        };
        let ended = match client.tail(request).await {
            Err(status) => Ended::Status(status),
            Ok(response) => {
                // The daemon fixed where the tail starts before it answered:
                // anything not yet searchable now comes.
                if following {
                    eprintln!("auditctl: tail resumed");
                } else {
                    eprintln!("auditctl: following; Ctrl-C to stop");
                    following = true;
                    if format == Format::Table {
                        match table_header(&mut out).and_then(|()| out.flush()) {
                            Err(e) if broken_pipe(&e) => return Ok(()),
                            other => other?,
                        }
                    }
                }
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(response)) => {
                            backoff.reset();
                            if !response.resume_token.is_empty() {
                                token = response.resume_token;
                            }
                            let mut lines = Vec::new();
                            print_events(&mut lines, &response.events, format)?;
                            match out.write_all(&lines).and_then(|()| out.flush()) {
                                Err(e) if broken_pipe(&e) => return Ok(()),
                                other => other?,
                            }
                        }
                        Ok(None) => break Ended::Closed,
                        Err(status) => break Ended::Status(status),
                    }
                }
            }
        };
        if let Ended::Status(status) = &ended {
            if fatal(status.code()) {
                return Err(status_error(status.clone()));
            }
            if token.is_empty() {
                token = token_in(status).unwrap_or_default().to_owned();
            }
        }
        let Some(wait) = backoff.failed() else {
            bail!("tail stream ended ({ended})");
        };
        let from = match token.is_empty() {
            true => "from now: no resume token yet",
            false => "after the last event received",
        };
        eprintln!("auditctl: tail stream ended ({ended}); resuming {from} in {wait:?}");
        tokio::time::sleep(wait).await;
    }
}

/// Writes every chunk's lines to stdout or `--output`, resuming after a
/// dropped stream, and on a resume without a token (nothing but CSV's
/// header came) leaves out the header a second time.
pub async fn export(
    mut client: Client,
    filter: EventFilter,
    args: &ExportArgs,
) -> anyhow::Result<()> {
    let format = args.format;
    let (mut out, progress): (Box<dyn Write>, _) = match &args.output {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let progress = indicatif::ProgressBar::new_spinner();
            progress.set_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {human_pos} events, {per_sec} [{elapsed_precise}]",
                )
                .expect("a valid template"),
            );
            progress.enable_steady_tick(Duration::from_millis(100));
            (Box::new(BufWriter::with_capacity(1 << 20, file)), progress)
        }
        None => (
            Box::new(BufWriter::new(std::io::stdout())),
            indicatif::ProgressBar::hidden(),
        ),
    };
    let written = |events: u64| match &args.output {
        Some(path) => format!("{events} events written to {}", path.display()),
        None => format!("{events} events written"),
    };
    let started = Instant::now();
    let mut token = String::new();
    let mut events = 0u64;
    let mut header_written = false;
    let mut backoff = Backoff::new(Some(EXPORT_ATTEMPTS));
    let mut answered = false;
    loop {
        let request = ExportRequest {
            filter: Some(filter.clone()),
            format: FileFormat::to_proto(format) as i32,
            ascending: args.ascending,
            resume_token: token.clone(),
        };
        let ended = match client.export(request).await {
            Err(status) => Ended::Status(status),
            Ok(response) => {
                if answered {
                    progress
                        .suspend(|| eprintln!("auditctl: export resumed after {events} events"));
                }
                answered = true;
                let mut stream = response.into_inner();
                loop {
                    match stream.message().await {
                        Ok(Some(chunk)) => {
                            backoff.reset();
                            let mut data = &chunk.data[..];
                            if token.is_empty() {
                                if header_written {
                                    data = data.strip_prefix(format.header()).unwrap_or(data);
                                }
                                header_written |= !data.is_empty();
                            }
                            match out.write_all(data) {
                                Err(e) if broken_pipe(&e) => return Ok(()),
                                other => other.context("writing the export")?,
                            }
                            events += chunk.events;
                            progress.set_position(events);
                            if !chunk.resume_token.is_empty() {
                                token = chunk.resume_token;
                            }
                        }
                        Ok(None) => break Ended::Closed,
                        Err(status) => break Ended::Status(status),
                    }
                }
            }
        };
        let status = match ended {
            // The end of the export.
            Ended::Closed => break,
            Ended::Status(status) => status,
        };
        let flushed = out.flush();
        if fatal(status.code()) {
            progress.finish_and_clear();
            flushed.ok();
            let error = status_error(status);
            return Err(match header_written || !token.is_empty() {
                true => anyhow::anyhow!("{error:#}; {}", written(events)),
                false => error,
            });
        }
        if token.is_empty() {
            token = token_in(&status).unwrap_or_default().to_owned();
        }
        let ended = Ended::Status(status);
        let Some(wait) = backoff.failed() else {
            progress.finish_and_clear();
            bail!(
                "export stream ended ({ended}), {EXPORT_ATTEMPTS} attempts in a row; {}",
                written(events)
            );
        };
        progress
            .suspend(|| eprintln!("auditctl: export stream ended ({ended}); resuming in {wait:?}"));
        tokio::time::sleep(wait).await;
    }
    match out.flush() {
        Err(e) if broken_pipe(&e) => return Ok(()),
        other => other.context("writing the export")?,
    }
    progress.finish_and_clear();
    if let Some(path) = &args.output {
        eprintln!(
            "exported {events} events to {} in {:.1} s",
            path.display(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_five_seconds_and_starts_over_after_a_response() {
        let mut backoff = Backoff::new(None);
        let waits: Vec<u64> = (0..9)
            .map(|_| backoff.failed().unwrap().as_millis() as u64)
            .collect();
        assert_eq!(waits, [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        backoff.reset();
        assert_eq!(backoff.failed(), Some(Duration::from_millis(100)));

        let mut bounded = Backoff::new(Some(3));
        assert!(bounded.failed().is_some());
        assert!(bounded.failed().is_some());
        assert_eq!(bounded.failed(), None);
        bounded.reset();
        assert!(bounded.failed().is_some());
    }

    #[test]
    fn the_resume_token_is_the_end_of_the_message() {
        let status =
            Status::unavailable("auditd is shutting down; resume with resume_token dDE6NDI");
        assert_eq!(token_in(&status), Some("dDE6NDI"));
        let stalled = Status::aborted(
            "the reader took nothing for 30000 ms (limits.stream_idle_timeout_ms); \
             resume with resume_token dDE6NDI",
        );
        assert_eq!(token_in(&stalled), Some("dDE6NDI"));
        assert_eq!(token_in(&Status::unavailable("transport error")), None);
        assert_eq!(
            token_in(&Status::unavailable("resume with resume_token ")),
            None
        );
    }

    #[test]
    fn only_what_the_caller_must_fix_is_fatal() {
        for code in [
            Code::InvalidArgument,
            Code::PermissionDenied,
            Code::Unauthenticated,
        ] {
            assert!(fatal(code), "{code:?}");
        }
        for code in [
            Code::Unavailable,
            Code::Aborted,
            Code::Unknown,
            Code::Internal,
            Code::Cancelled,
            Code::ResourceExhausted,
        ] {
            assert!(!fatal(code), "{code:?}");
        }
    }
}
