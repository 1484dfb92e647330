//! Which days may go: the rules of `[retention]`, the compliance floor and
//! the legal holds, held against one day's partition.
//!
//! An event is kept for the longest rule that matches it, or
//! `default_days` when none does (forever when that is unset). A
//! partition is dropped only when every event in it is past its own rule
//! (so a partition that mixes rules waits for the longest), the floor has
//! passed, and no hold matches any of its events.

use tantivy::collector::Count;
use tantivy::query::{AllQuery, BooleanQuery, Occur, Query, QueryParser};

use super::Hold;
use crate::app::trail::TRAIL_TYPE;
use crate::config::RetentionConfig;
use crate::partition::{format_day, Day, Partition, PARTITION_MICROS};
use crate::schema::AuditSchema;
use crate::search::{actions_query, prefix_query, term};

/// One rule, named as the configuration names it.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// `retention.rules[2]`, `retention.trail_days`.
    pub name: String,
    pub type_prefix: String,
    pub actions: Vec<String>,
    pub days: u32,
}

/// The configured rules.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub default_days: Option<u32>,
}

/// What to do with one partition, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Keep(String),
    /// Every event is past `days`, the longest rule present (`rule`).
    Drop {
        days: u32,
        rule: String,
    },
}

impl Policy {
    pub fn new(config: &RetentionConfig) -> Policy {
        let mut rules: Vec<Rule> = config
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| Rule {
                name: format!("retention.rules[{i}]"),
                type_prefix: r.type_prefix.clone(),
                actions: r.actions.clone(),
                days: r.days,
            })
            .collect();
        if let Some(days) = config.trail_days {
            rules.push(Rule {
                name: "retention.trail_days".into(),
                type_prefix: TRAIL_TYPE.into(),
                actions: Vec::new(),
                days,
            });
        }
        Policy {
            rules,
            default_days: config.default_days,
        }
    }

    /// The first setting that would remove an event sooner than `floor`
    /// days, named with its days.
    pub fn below(&self, floor: u32) -> Option<String> {
        if let Some(rule) = self.rules.iter().find(|r| r.days < floor) {
            return Some(format!("{} keeps {} days", rule.name, rule.days));
        }
        self.default_days
            .filter(|d| *d < floor)
            .map(|d| format!("retention.default_days keeps {d} days"))
    }

    /// The fewest days any event is kept (`None`: nothing ever goes).
    pub fn shortest(&self) -> Option<u32> {
        let days = self.rules.iter().map(|r| r.days).chain(self.default_days);
        days.min()
    }

    /// What may become of the partition of `day` at `now` (µs), given
    /// the floor and the holds in force.
    pub fn judge(
        &self,
        schema: &AuditSchema,
        partition: &Partition,
        floor: Option<u32>,
        holds: &[Hold],
        now: i64,
    ) -> tantivy::Result<Verdict> {
        let day = partition.day;
        if let Some(floor) = floor.filter(|f| !past(day, *f, now)) {
            return Ok(Verdict::Keep(format!(
                "the compliance floor of {floor} days keeps it until {}",
                until(day, floor)
            )));
        }
        let searcher = partition.reader.searcher();
        let total = searcher.num_docs();
        if total == 0 {
            return Ok(Verdict::Keep("it holds no event".into()));
        }
        // The longest rule any of its events is under.
        let mut longest: Option<(u32, String)> = None;
        let mut matched = Vec::new();
        for rule in &self.rules {
            let query = rule_query(schema, rule)?;
            if searcher.search(&query, &Count)? > 0
                && longest.as_ref().is_none_or(|l| rule.days > l.0)
            {
                longest = Some((rule.days, rule.name.clone()));
            }
            matched.push((Occur::Should, query));
        }
        let under_rules = match matched.is_empty() {
            true => 0,
            false => searcher.search(&BooleanQuery::new(matched), &Count)?,
        } as u64;
        if under_rules < total {
            match self.default_days {
                None => {
                    return Ok(Verdict::Keep(
                        "it holds events no rule matches, kept forever (retention.default_days is not set)"
                            .into(),
                    ))
                }
                Some(days) if longest.as_ref().is_none_or(|l| days > l.0) => {
                    longest = Some((days, "retention.default_days".into()));
                }
                Some(_) => {}
            }
        }
        let (days, rule) = longest.expect("some rule or the default covers every event");
        if !past(day, days, now) {
            return Ok(Verdict::Keep(format!(
                "{rule} ({days} days) keeps it until {}",
                until(day, days)
            )));
        }
        for hold in holds {
            if searcher.search(&hold_query(schema, partition, hold)?, &Count)? > 0 {
                return Ok(Verdict::Keep(format!(
                    "legal hold {} ({})",
                    hold.id, hold.reason
                )));
            }
        }
        Ok(Verdict::Drop { days, rule })
    }
}

/// Whether every event of `day` is more than `days` days old at `now`.
pub fn past(day: Day, days: u32, now: i64) -> bool {
    now >= (day + 1 + i64::from(days)) * PARTITION_MICROS
}

/// The first day on which `day` is past `days` days.
fn until(day: Day, days: u32) -> String {
    format_day(day + 1 + i64::from(days))
}

fn rule_query(s: &AuditSchema, rule: &Rule) -> tantivy::Result<Box<dyn Query>> {
    let bad = |e: String| tantivy::TantivyError::InvalidArgument(format!("{}: {e}", rule.name));
    let mut must: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    if !rule.type_prefix.is_empty() {
        must.push((
            Occur::Must,
            prefix_query(s.type_, &rule.type_prefix).map_err(bad)?,
        ));
    }
    if !rule.actions.is_empty() {
        must.push((Occur::Must, actions_query(s, &rule.actions).map_err(bad)?));
    }
    Ok(match must.is_empty() {
        true => Box::new(AllQuery),
        false => Box::new(BooleanQuery::new(must)),
    })
}

/// The events a hold keeps: its subject's and its query's (both when
/// both are set).
pub fn hold_query(
    s: &AuditSchema,
    partition: &Partition,
    hold: &Hold,
) -> tantivy::Result<Box<dyn Query>> {
    let mut must: Vec<(Occur, Box<dyn Query>)> = Vec::new();
    if !hold.subject.is_empty() {
        must.push((Occur::Must, term(s.subject, &hold.subject)));
    }
    if !hold.query.is_empty() {
        let parser = QueryParser::for_index(&partition.index, vec![s.text]);
        let parsed = parser
            .parse_query(&hold.query)
            .map_err(|e| tantivy::TantivyError::InvalidArgument(e.to_string()))?;
        must.push((Occur::Must, parsed));
    }
    Ok(match must.is_empty() {
        true => Box::new(AllQuery),
        false => Box::new(BooleanQuery::new(must)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_day_is_past_its_rule_only_once_its_last_microsecond_is() {
        // 2026-10-01 is day 20362; with 30 days it may go on 2026-11-01.
        let day = crate::partition::parse_day("2026-10-01").unwrap();
        let nov1 = crate::partition::parse_day("2026-11-01").unwrap() * PARTITION_MICROS;
        assert!(!past(day, 30, nov1 - 1));
        assert!(past(day, 30, nov1));
        assert_eq!(until(day, 30), "2026-11-01");
    }

    /// A partition of `day` in `dir` holding one event of each type.
    fn partition_with(dir: &std::path::Path, day: Day, types: &[(&str, &str)]) -> Partition {
        let partitions =
            crate::partition::Partitions::open(dir, AuditSchema::new(), false).unwrap();
        let partition = partitions.get_or_create(day).unwrap();
        let mut writer = partition
            .index
            .writer_with_num_threads(1, 15_000_000)
            .unwrap();
        let schema = partitions.schema();
        for (seq, (type_, subject)) in types.iter().enumerate() {
            let mut event = crate::proto::AuditEvent {
                id: format!("e{seq}"),
                r#type: (*type_).into(),
                action: "events.get".into(),
                subject: (*subject).into(),
                time: Some(crate::schema::micros_to_timestamp(
                    day * PARTITION_MICROS + 1,
                )),
                ..Default::default()
            };
            let doc = schema.document(&mut event, seq as u64, "b", None, &mut Vec::new());
            writer.add_document(doc).unwrap();
        }
        writer.commit().unwrap();
        partition.reader.reload().unwrap();
        drop(partitions);
        std::sync::Arc::try_unwrap(partition)
            .ok()
            .expect("one handle")
    }

    #[test]
    fn with_a_fake_clock_a_mixed_day_waits_for_its_longest_rule_the_floor_and_its_holds() {
        let dir = tempfile::tempdir().unwrap();
        let day = crate::partition::parse_day("2026-01-10").unwrap();
        let partition = partition_with(
            dir.path(),
            day,
            &[
                ("svc/a", "s1"),
                ("audit-log/auditd", "s2"),
                ("debug/x", "s3"),
            ],
        );
        let policy = Policy::new(&RetentionConfig {
            default_days: Some(30),
            trail_days: Some(90),
            rules: vec![crate::config::RetentionRule {
                type_prefix: "debug/".into(),
                actions: vec!["events.*".into()],
                days: 7,
            }],
            ..Default::default()
        });
        let schema = AuditSchema::new();
        let at = |days: i64| (day + 1 + days) * PARTITION_MICROS;
        let judge = |now, floor, holds: &[Hold]| {
            policy
                .judge(&schema, &partition, floor, holds, now)
                .unwrap()
        };
        // The trail rule (90 days) is the longest present: not before day 91.
        let kept = judge(at(89), None, &[]);
        assert!(
            matches!(&kept, Verdict::Keep(why) if why.contains("retention.trail_days")),
            "{kept:?}"
        );
        assert_eq!(
            judge(at(90), None, &[]),
            Verdict::Drop {
                days: 90,
                rule: "retention.trail_days".into()
            }
        );
        // The floor comes first.
        assert!(
            matches!(judge(at(90), Some(365), &[]), Verdict::Keep(why) if why.contains("floor"))
        );
        assert!(matches!(
            judge(at(365), Some(365), &[]),
            Verdict::Drop { .. }
        ));
        // A hold on a subject in it keeps it; one on nobody there does not.
        let hold = |subject: &str, query: &str| Hold {
            id: "h1".into(),
            subject: subject.into(),
            query: query.into(),
            reason: "case".into(),
            by: "admin".into(),
            created: 0,
            released: None,
        };
        assert!(
            matches!(judge(at(90), None, &[hold("s3", "")]), Verdict::Keep(why) if why.contains("h1"))
        );
        assert!(matches!(
            judge(at(90), None, &[hold("", "type:svc/a")]),
            Verdict::Keep(_)
        ));
        assert!(matches!(
            judge(at(90), None, &[hold("nobody", "")]),
            Verdict::Drop { .. }
        ));
    }

    #[test]
    fn events_no_rule_matches_keep_a_day_forever_without_a_default() {
        let dir = tempfile::tempdir().unwrap();
        let day = crate::partition::parse_day("2026-01-10").unwrap();
        let partition = partition_with(dir.path(), day, &[("svc/a", "s1"), ("debug/x", "s3")]);
        let policy = Policy::new(&RetentionConfig {
            rules: vec![crate::config::RetentionRule {
                type_prefix: "debug/".into(),
                actions: Vec::new(),
                days: 7,
            }],
            ..Default::default()
        });
        let now = (day + 10_000) * PARTITION_MICROS;
        let verdict = policy
            .judge(&AuditSchema::new(), &partition, None, &[], now)
            .unwrap();
        assert!(
            matches!(&verdict, Verdict::Keep(why) if why.contains("forever")),
            "{verdict:?}"
        );
    }

    #[test]
    fn the_setting_below_a_floor_is_named() {
        let config = RetentionConfig {
            default_days: Some(400),
            trail_days: Some(30),
            rules: vec![crate::config::RetentionRule {
                type_prefix: "audit-log/".into(),
                actions: Vec::new(),
                days: 2190,
            }],
            ..Default::default()
        };
        let policy = Policy::new(&config);
        assert_eq!(policy.shortest(), Some(30));
        assert_eq!(
            policy.below(365).as_deref(),
            Some("retention.trail_days keeps 30 days")
        );
        assert_eq!(policy.below(30), None);
        let default_only = Policy::new(&RetentionConfig {
            default_days: Some(30),
            ..Default::default()
        });
        assert_eq!(
            default_only.below(31).as_deref(),
            Some("retention.default_days keeps 30 days")
        );
    }
}
