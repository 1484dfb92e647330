//! A filter matched against an event in memory, as the index would match
//! it: what lets Tail hand over an event as soon as the indexer has it
//! (`recent.rs`, the live run), not a commit later.
//!
//! Only the structured filters are matched here: time, actions (and
//! `prefix.*`), access ids, subjects, types, source names, addresses and
//! CIDR blocks, status and outcome, the caller's scope and the trail's
//! exclusion. Each reads the value the index would have taken as its
//! term (`AuditSchema::document`): the raw keyword, the address parsed and
//! IPv4-mapped, the status as stored. Free text and query strings are
//! words of an analyzer and a parser's grammar: a filter with either has
//! no live form, and its follower reads the index after each commit.

use std::net::{IpAddr, Ipv6Addr};

use super::{status_range, time_range, SearchError};
use crate::app::trail::TRAIL_TYPE;
use crate::auth::ReadScope;
use crate::proto::{AuditEvent, EventFilter};
use crate::schema::to_v6;

/// `filter` inside `scope`, in memory.
#[derive(Debug, Clone)]
pub struct LiveFilter {
    from: Option<i64>,
    to: Option<i64>,
    actions: Vec<String>,
    access_ids: Vec<String>,
    subjects: Vec<String>,
    types: Vec<String>,
    source_names: Vec<String>,
    ips: Vec<(Ipv6Addr, Ipv6Addr)>,
    status: Option<(i64, i64)>,
    scope: ReadScope,
    trail: bool,
}

impl LiveFilter {
    /// `Ok(None)` when the filter has free text or a query string. The
    /// filter is checked as `Searcher::matching` checks it.
    pub fn new(filter: &EventFilter, scope: &ReadScope) -> Result<Option<LiveFilter>, SearchError> {
        if !filter.text.trim().is_empty() || !filter.query.trim().is_empty() {
            return Ok(None);
        }
        let (from, to) = time_range(filter)?;
        let ips = filter
            .ips
            .iter()
            .map(|ip| super::parse_ip_filter(ip))
            .collect::<Result<_, _>>()?;
        Ok(Some(LiveFilter {
            from,
            to,
            actions: filter.actions.clone(),
            access_ids: filter.access_ids.clone(),
            subjects: filter.subjects.clone(),
            types: filter.types.clone(),
            source_names: filter.source_names.clone(),
            ips,
            status: status_range(filter)?,
            scope: scope.clone(),
            trail: super::wants_trail(filter),
        }))
    }

    /// Whether the index would match `event`, whose time is `time`
    /// (microseconds, as its column holds it).
    pub fn matches(&self, event: &AuditEvent, time: i64) -> bool {
        let in_scope = match &self.scope {
            ReadScope::All => true,
            ReadScope::Subject(subject) => event.subject == *subject,
            ReadScope::SubjectAndAccess { subject, access_id } => {
                event.subject == *subject && event.access_id == *access_id
            }
        };
        let source = event.source.as_ref();
        let source_name = source.map_or("", |s| s.name.as_str());
        in_scope
            && self.from.is_none_or(|from| time >= from)
            && self.to.is_none_or(|to| time < to)
            && (self.trail || event.r#type != TRAIL_TYPE)
            && (self.actions.is_empty() || self.actions.iter().any(|a| action(a, &event.action)))
            && one_of(&self.access_ids, &event.access_id)
            && one_of(&self.subjects, &event.subject)
            && one_of(&self.types, &event.r#type)
            && one_of(&self.source_names, source_name)
            && (self.ips.is_empty() || self.ip_matches(source.map_or("", |s| s.ip.as_str())))
            && self.status.is_none_or(|(lo, hi)| {
                let status = i64::from(event.status);
                lo <= status && status <= hi
            })
    }

    fn ip_matches(&self, ip: &str) -> bool {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return false;
        };
        let ip = to_v6(ip);
        self.ips.iter().any(|(lo, hi)| *lo <= ip && ip <= *hi)
    }
}

/// A keyword filter: no values, or the (non-empty: an empty keyword is not
/// indexed) value is one of them.
fn one_of(values: &[String], value: &str) -> bool {
    values.is_empty() || (!value.is_empty() && values.iter().any(|v| v == value))
}

/// An action filter: the action itself, or `prefix*` for every action
/// starting with `prefix`, as `actions_query` reads it.
fn action(filter: &str, action: &str) -> bool {
    if action.is_empty() {
        return false;
    }
    match filter.strip_suffix('*') {
        Some(prefix) => action.starts_with(prefix),
        None => filter == action,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Outcome, Source};

    fn event(action: &str, subject: &str, ip: &str, status: i32) -> AuditEvent {
        AuditEvent {
            action: action.into(),
            subject: subject.into(),
            access_id: "acc".into(),
            r#type: "log/app".into(),
            status,
            source: Some(Source {
                name: "api".into(),
                ip: ip.into(),
            }),
            ..Default::default()
        }
    }

    fn live(filter: EventFilter) -> LiveFilter {
        LiveFilter::new(&filter, &ReadScope::All).unwrap().unwrap()
    }

    #[test]
    fn text_and_query_have_no_live_form_and_bad_filters_are_refused() {
        let text = EventFilter {
            text: "word".into(),
            ..Default::default()
        };
        assert!(LiveFilter::new(&text, &ReadScope::All).unwrap().is_none());
        let bad = EventFilter {
            ips: vec!["10.0.0.1/8".into()],
            ..Default::default()
        };
        assert!(matches!(
            LiveFilter::new(&bad, &ReadScope::All),
            Err(SearchError::Invalid { field: "ips", .. })
        ));
    }

    #[test]
    fn each_filter_reads_the_value_the_index_takes() {
        let e = event("auth.login", "alice", "10.1.2.3", 401);
        let all = live(EventFilter::default());
        assert!(all.matches(&e, 5));
        let prefix = live(EventFilter {
            actions: vec!["auth.*".into(), "x".into()],
            ..Default::default()
        });
        assert!(prefix.matches(&e, 5));
        let exact = live(EventFilter {
            actions: vec!["auth.".into()],
            ..Default::default()
        });
        assert!(!exact.matches(&e, 5));
        let cidr = live(EventFilter {
            ips: vec!["10.1.0.0/16".into()],
            ..Default::default()
        });
        assert!(cidr.matches(&e, 5));
        assert!(!cidr.matches(&event("a", "s", "10.2.0.1", 200), 5));
        assert!(!cidr.matches(&event("a", "s", "not an ip", 200), 5));
        let mapped = live(EventFilter {
            ips: vec!["::ffff:10.1.2.3".into()],
            ..Default::default()
        });
        assert!(mapped.matches(&e, 5));
        let failure = live(EventFilter {
            outcome: Outcome::Failure as i32,
            ..Default::default()
        });
        assert!(failure.matches(&e, 5));
        assert!(!failure.matches(&event("a", "s", "", 0), 5));
        let window = live(EventFilter {
            from_time: Some(crate::schema::micros_to_timestamp(5)),
            to_time: Some(crate::schema::micros_to_timestamp(6)),
            ..Default::default()
        });
        assert!(window.matches(&e, 5) && !window.matches(&e, 6) && !window.matches(&e, 4));
        let empty = live(EventFilter {
            subjects: vec![String::new()],
            ..Default::default()
        });
        assert!(!empty.matches(&event("a", "", "", 200), 5));
    }

    #[test]
    fn scope_and_trail_narrow_every_filter() {
        let mine = event("a", "alice", "", 200);
        let mut theirs = mine.clone();
        theirs.access_id = "other".into();
        let scope = ReadScope::SubjectAndAccess {
            subject: "alice".into(),
            access_id: "acc".into(),
        };
        let scoped = LiveFilter::new(&EventFilter::default(), &scope)
            .unwrap()
            .unwrap();
        assert!(scoped.matches(&mine, 0) && !scoped.matches(&theirs, 0));
        let mut trail = mine.clone();
        trail.r#type = TRAIL_TYPE.into();
        assert!(!scoped.matches(&trail, 0));
        let asked = live(EventFilter {
            types: vec![TRAIL_TYPE.into()],
            ..Default::default()
        });
        assert!(asked.matches(&trail, 0) && !asked.matches(&mine, 0));
    }
}
