//! `auditctl retention …` and `auditctl hold …`: the retention settings,
//! the compliance floor, a sweep now, and legal holds.

use auditd::client::RetentionClient;
use auditd::proto::{
    AddHoldRequest, DroppedDay, GetRetentionRequest, Hold, ListHoldsRequest, LockRetentionRequest,
    ReleaseHoldRequest, SweepRequest,
};
use clap::Subcommand;

use crate::status_error;

#[derive(Subcommand, Debug, Clone)]
pub enum RetentionCommand {
    /// Print the rules, the compliance floor, the holds in force and the
    /// days dropped so far.
    Status,
    /// Record, durably and irreversibly, that no event may be removed by
    /// retention before N days (only raising it is allowed afterwards).
    Lock {
        #[arg(long)]
        min_days: u32,
    },
    /// Drop now every day that is due (the daemon also does it every
    /// retention.sweep_interval_ms).
    Sweep,
}

#[derive(Subcommand, Debug, Clone)]
pub enum HoldCommand {
    /// Keep every day holding an event of the subject, or matching the
    /// query, until the hold is released.
    Add {
        #[arg(long)]
        subject: Option<String>,
        /// A query-string query, as in `search --query`.
        #[arg(long)]
        query: Option<String>,
        #[arg(long)]
        reason: String,
    },
    /// List the holds in force (--all: released ones too).
    List {
        #[arg(long)]
        all: bool,
    },
    /// Release a hold by id.
    Release { id: String },
}

pub async fn retention(
    mut client: RetentionClient,
    command: &RetentionCommand,
) -> anyhow::Result<()> {
    match command {
        RetentionCommand::Status => {
            let status = client
                .get_retention(GetRetentionRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            match status.floor_days {
                Some(days) => println!("compliance floor: {days} days"),
                None => println!("compliance floor: none"),
            }
            match status.default_days {
                Some(days) => println!("retention.default_days: {days}"),
                None => println!("retention.default_days: forever"),
            }
            for rule in &status.rules {
                println!(
                    "{}: type prefix {:?}, actions {:?}: {} days",
                    rule.name, rule.type_prefix, rule.actions, rule.days
                );
            }
            println!(
                "oldest day kept: {}",
                if status.oldest_day.is_empty() {
                    "none"
                } else {
                    &status.oldest_day
                }
            );
            for hold in &status.holds {
                print_hold(hold);
            }
            for day in &status.dropped {
                print_dropped(day);
            }
        }
        RetentionCommand::Lock { min_days } => {
            let status = client
                .lock(LockRetentionRequest {
                    min_days: *min_days,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            println!(
                "compliance floor: {} days (irreversible)",
                status.floor_days.unwrap_or_default()
            );
        }
        RetentionCommand::Sweep => {
            let swept = client
                .sweep(SweepRequest {})
                .await
                .map_err(status_error)?
                .into_inner();
            for day in &swept.dropped {
                print_dropped(day);
            }
            for kept in &swept.kept {
                println!("kept {}: {}", kept.day, kept.reason);
            }
            println!("{} day(s) dropped", swept.dropped.len());
        }
    }
    Ok(())
}

pub async fn hold(mut client: RetentionClient, command: &HoldCommand) -> anyhow::Result<()> {
    match command {
        HoldCommand::Add {
            subject,
            query,
            reason,
        } => {
            let hold = client
                .add_hold(AddHoldRequest {
                    subject: subject.clone().unwrap_or_default(),
                    query: query.clone().unwrap_or_default(),
                    reason: reason.clone(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            print_hold(&hold);
        }
        HoldCommand::List { all } => {
            let holds = client
                .list_holds(ListHoldsRequest {
                    include_released: *all,
                })
                .await
                .map_err(status_error)?
                .into_inner()
                .holds;
            for hold in &holds {
                print_hold(hold);
            }
        }
        HoldCommand::Release { id } => {
            let hold = client
                .release_hold(ReleaseHoldRequest { id: id.clone() })
                .await
                .map_err(status_error)?
                .into_inner();
            print_hold(&hold);
        }
    }
    Ok(())
}

fn print_hold(hold: &Hold) {
    let state = match hold.released {
        Some(_) => "released",
        None => "in force",
    };
    println!(
        "hold {} ({state}): subject {:?}, query {:?}, reason {:?}, by {}",
        hold.id, hold.subject, hold.query, hold.reason, hold.created_by
    );
}

fn print_dropped(day: &DroppedDay) {
    println!(
        "dropped {}: {} events, {} bytes ({}, {} days; drop {})",
        day.day, day.events, day.bytes, day.rule, day.days, day.id
    );
}
