//! `auditctl subject …`: the data subject's rights.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{bail, Context};
use auditd::client::SubjectsClient;
use auditd::formats::Format as FileFormat;
use auditd::integrity::receipt::{verify_receipt, Receipt};
use auditd::json::JsonEvent;
use auditd::proto::{EraseSubjectRequest, ErasureMode, ExportSubjectRequest};
use clap::Subcommand;

use crate::integrity::read_key;
use crate::status_error;
use crate::streams::file_format;

#[derive(Subcommand, Debug, Clone)]
pub enum SubjectCommand {
    /// Every event of a subject (GDPR Art. 15) into a directory: the
    /// events (events.<format>), their receipts (proofs.ndjson), the
    /// checkpoint they are against (checkpoint.txt) and a report
    /// (report.html). With --key, every receipt is checked as it comes.
    Export {
        #[arg(long)]
        subject: String,
        /// ndjson (the default), ocsf, ecs, cef or csv.
        #[arg(long, value_parser = file_format(), default_value = "ndjson")]
        format: FileFormat,
        /// The directory to write (made if missing).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// The log's verifier key (or a file holding it): check every
        /// receipt offline, and with --format ndjson that it is the event.
        #[arg(long)]
        key: Option<String>,
    },
    /// Erase (or pseudonymise) the subject's personal fields in every event
    /// stored so far, everywhere under the data directory; every proof
    /// still verifies (GDPR Art. 17; an admin token). Irreversible.
    Erase {
        #[arg(long)]
        subject: String,
        /// erase: the fields go; pseudonymise: keyed pseudonyms replace them.
        #[arg(long, value_parser = ["erase", "pseudonymise"])]
        mode: String,
        /// Why, for the trail (without naming the person).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

pub async fn subject(client: SubjectsClient, command: &SubjectCommand) -> anyhow::Result<()> {
    match command {
        SubjectCommand::Export {
            subject,
            format,
            out,
            key,
        } => export(client, subject, *format, out, key.as_deref()).await,
        SubjectCommand::Erase {
            subject,
            mode,
            reason,
        } => erase(client, subject, mode, reason).await,
    }
}

async fn erase(
    mut client: SubjectsClient,
    subject: &str,
    mode: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let mode = match mode {
        "pseudonymise" => ErasureMode::Pseudonymise,
        _ => ErasureMode::Erase,
    };
    let done = client
        .erase_subject(EraseSubjectRequest {
            subject: subject.to_owned(),
            mode: mode as i32,
            reason: reason.to_owned(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    println!(
        "request {}: {} event(s) {}, {} trail event(s) naming the subject cleaned",
        done.request_id,
        done.erased,
        match mode {
            ErasureMode::Erase => "erased",
            ErasureMode::Pseudonymise => "pseudonymised",
        },
        done.references
    );
    for kept in &done.kept {
        println!(
            "kept: {} event(s) of type {}* (erasure.keep_type_prefixes)",
            kept.events, kept.type_prefix
        );
    }
    if done.damaged_files_removed > 0 {
        println!(
            "removed {} file(s) `auditd recover` had kept in damaged/",
            done.damaged_files_removed
        );
    }
    Ok(())
}

async fn export(
    mut client: SubjectsClient,
    subject: &str,
    format: FileFormat,
    out: &std::path::Path,
    key: Option<&str>,
) -> anyhow::Result<()> {
    let key = key.map(read_key).transpose()?;
    std::fs::create_dir_all(out).with_context(|| format!("making {}", out.display()))?;
    let create = |name: String| {
        let path = out.join(name);
        std::fs::File::create(&path)
            .map(std::io::BufWriter::new)
            .with_context(|| format!("writing {}", path.display()))
    };
    let mut events = create(format!("events.{}", format.extension()))?;
    let mut proofs = create("proofs.ndjson".into())?;
    let mut stream = client
        .export_subject(ExportSubjectRequest {
            subject: subject.to_owned(),
            format: format.to_proto() as i32,
        })
        .await
        .map_err(status_error)?
        .into_inner();
    let (mut count, mut verified, mut report) = (0u64, 0u64, false);
    while let Some(chunk) = stream.message().await.map_err(status_error)? {
        if let Some(checkpoint) = &chunk.checkpoint {
            std::fs::write(out.join("checkpoint.txt"), &checkpoint.note)?;
        }
        events.write_all(&chunk.data)?;
        let lines: Vec<&[u8]> = match format {
            FileFormat::Ndjson => chunk
                .data
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .collect(),
            _ => Vec::new(),
        };
        for (i, proof) in chunk.proofs.iter().enumerate() {
            let line =
                serde_json::json!({ "id": proof.id, "seq": proof.seq, "proof": proof.tlog_proof });
            writeln!(proofs, "{line}")?;
            if let (Some(key), false) = (&key, proof.tlog_proof.is_empty()) {
                let event = lines
                    .get(i)
                    .map(|l| {
                        JsonEvent::parse(&String::from_utf8_lossy(l))
                            .and_then(JsonEvent::into_stored)
                    })
                    .transpose()
                    .with_context(|| format!("event {} is not an event as JSON", proof.id))?;
                let receipt = Receipt::parse(&proof.tlog_proof)?;
                verify_receipt(&receipt, key, event.as_ref()).with_context(|| {
                    format!("the receipt of event {} (seq {})", proof.id, proof.seq)
                })?;
                verified += 1;
            }
        }
        count += chunk.events;
        if !chunk.report_html.is_empty() {
            std::fs::write(out.join("report.html"), &chunk.report_html)?;
            report = true;
        }
    }
    events.flush()?;
    proofs.flush()?;
    if !report {
        bail!("the export ended before its report: run it again");
    }
    println!(
        "{count} event(s) of {subject:?} written to {}",
        out.display()
    );
    if key.is_some() {
        println!("{verified} receipt(s) verified offline against the checkpoint in checkpoint.txt");
    }
    Ok(())
}
