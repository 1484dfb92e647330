//! The oracle the read tests share: which events a filter matches,
//! written from the API's contract rather than from the server's code,
//! and random filters built from values that occur.

use std::net::IpAddr;

use auditd::proto::{AuditEvent, EventFilter, Outcome, SearchRequest};
use auditd::schema::{micros_to_timestamp, timestamp_micros};
use rand::rngs::StdRng;
use rand::Rng;

/// The oracle: does `e` match `r`? Written from the API's contract, not
/// from the server's code.
pub fn matches(r: &EventFilter, e: &AuditEvent) -> bool {
    let time = timestamp_micros(e.time.as_ref());
    if let Some(from) = &r.from_time {
        if time < timestamp_micros(Some(from)) {
            return false;
        }
    }
    if let Some(to) = &r.to_time {
        if time >= timestamp_micros(Some(to)) {
            return false;
        }
    }
    if !r.actions.is_empty()
        && !r.actions.iter().any(|a| match a.strip_suffix('*') {
            Some(prefix) => e.action.starts_with(prefix),
            None => *a == e.action,
        })
    {
        return false;
    }
    let source = e.source.clone().unwrap_or_default();
    for (wanted, value) in [
        (&r.access_ids, &e.access_id),
        (&r.subjects, &e.subject),
        (&r.types, &e.r#type),
        (&r.source_names, &source.name),
    ] {
        if !wanted.is_empty() && !wanted.contains(value) {
            return false;
        }
    }
    if !r.ips.is_empty() {
        let Ok(ip) = source.ip.parse::<IpAddr>() else {
            return false;
        };
        let ip = canonical(ip);
        let hit = r.ips.iter().any(|f| match f.parse::<ipnet::IpNet>() {
            Ok(net) => match (net, ip) {
                (ipnet::IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
                (ipnet::IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
                (ipnet::IpNet::V6(n), IpAddr::V4(a)) => n.contains(&a.to_ipv6_mapped()),
                _ => false,
            },
            Err(_) => canonical(f.parse().unwrap()) == ip,
        });
        if !hit {
            return false;
        }
    }
    let status = e.status;
    let outcome = Outcome::try_from(r.outcome).unwrap();
    let status_filtered =
        outcome != Outcome::Any || r.status_min.is_some() || r.status_max.is_some();
    if status_filtered && status == 0 {
        return false;
    }
    match outcome {
        Outcome::Success if status >= 400 => return false,
        Outcome::Failure if status < 400 => return false,
        _ => {}
    }
    if r.status_min.is_some_and(|m| status < m) || r.status_max.is_some_and(|m| status > m) {
        return false;
    }
    if !r.text.is_empty() {
        let have = words_of_event(e);
        if !words(&r.text).iter().all(|w| have.contains(w)) {
            return false;
        }
    }
    true
}

pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

pub fn words(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

pub fn words_of_event(e: &AuditEvent) -> std::collections::HashSet<String> {
    let source_name = e
        .source
        .as_ref()
        .map(|s| s.name.clone())
        .unwrap_or_default();
    let mut all = vec![
        e.id.clone(),
        e.r#type.clone(),
        e.action.clone(),
        e.access_id.clone(),
        e.subject.clone(),
        source_name,
        e.resource.clone(),
        e.error_id.clone(),
        e.error_message.clone(),
        e.before.clone(),
        e.after.clone(),
    ];
    all.extend(e.query.values().cloned());
    all.extend(e.attributes.values().cloned());
    all.iter().flat_map(|s| words(s)).collect()
}

/// A random filter built from values that occur (and sometimes not).
pub fn random_filter(rng: &mut StdRng, events: &[AuditEvent]) -> EventFilter {
    let mut r = EventFilter::default();
    let pick = |rng: &mut StdRng| events[rng.random_range(0..events.len())].clone();
    let filters = rng.random_range(1..=3);
    for _ in 0..filters {
        let e = pick(rng);
        let source = e.source.clone().unwrap_or_default();
        match rng.random_range(0..11) {
            0 => r.actions.push(e.action.clone()),
            1 => {
                let family = e.action.split('.').next().unwrap();
                r.actions.push(format!("{family}.*"));
            }
            2 => r.access_ids.push(e.access_id.clone()),
            3 => r.subjects.push(e.subject.clone()),
            4 => r.ips.push(source.ip.clone()),
            5 => {
                let ip: IpAddr = source.ip.parse().unwrap();
                let block = match ip {
                    IpAddr::V4(_) => ipnet::IpNet::new(ip, [8, 16][rng.random_range(0..2)])
                        .unwrap()
                        .trunc(),
                    IpAddr::V6(_) => ipnet::IpNet::new(ip, [32, 48][rng.random_range(0..2)])
                        .unwrap()
                        .trunc(),
                };
                r.ips.push(block.to_string());
            }
            6 => {
                let (a, b) = (pick(rng), pick(rng));
                let (a, b) = (
                    timestamp_micros(a.time.as_ref()),
                    timestamp_micros(b.time.as_ref()),
                );
                let (lo, hi) = (a.min(b), a.max(b) + 1);
                r.from_time = Some(micros_to_timestamp(lo));
                r.to_time = Some(micros_to_timestamp(hi));
            }
            7 => {
                let codes = [200, 201, 400, 403, 404, 500];
                let lo = codes[rng.random_range(0..codes.len())];
                // Both bounds anew, so a second pick cannot cross them.
                r.status_min = Some(lo);
                r.status_max = rng.random_bool(0.5).then(|| lo + rng.random_range(0..150));
            }
            8 => r.outcome = [Outcome::Success, Outcome::Failure][rng.random_range(0..2)] as i32,
            9 => {
                let source_words = if e.error_message.is_empty() {
                    words(&e.subject)
                } else {
                    words(&e.error_message)
                };
                let n = rng.random_range(1..=2.min(source_words.len()));
                r.text = source_words[..n].join(" ");
            }
            _ => {
                // Two values of one filter are OR-ed; one may not exist.
                r.subjects.push(e.subject.clone());
                r.subjects.push(if rng.random_bool(0.5) {
                    pick(rng).subject
                } else {
                    "nobody".into()
                });
            }
        }
    }
    r
}

/// A search request with `filter`'s fields.
pub fn search_request(f: EventFilter) -> SearchRequest {
    SearchRequest {
        from_time: f.from_time,
        to_time: f.to_time,
        actions: f.actions,
        access_ids: f.access_ids,
        subjects: f.subjects,
        ips: f.ips,
        status_min: f.status_min,
        status_max: f.status_max,
        outcome: f.outcome,
        types: f.types,
        source_names: f.source_names,
        text: f.text,
        query: f.query,
        ..Default::default()
    }
}
