//! Pryv's `streams` parameter over the audit store, read as Pryv reads it
//! and turned into a query over `access_id` and `action`:
//!
//! - a stream id (`:_audit:access-X`), an array of them (any of them), or
//!   a stream query `{"any": [...], "all": [...], "not": [...]}` or an
//!   array of such queries (any of them), as stringified JSON;
//! - `:_audit:` (the store), `:_audit:accesses` and `:_audit:actions` (its
//!   two parents) stand for every audit event;
//! - a stream outside `:_audit:` is `invalid-request-structure`.

use serde_json::Value;

use super::PryvError;

const ROOT: &str = ":_audit:";

/// One stream, as a clause of the query: `None` matches every event.
fn clause(stream: &str) -> Result<Option<String>, PryvError> {
    let Some(rest) = stream.strip_prefix(ROOT) else {
        return Err(PryvError::structure(format!(
            "Initial filtering: Error in 'streams' parameter: stream {stream:?} is not an \
             audit stream: this server holds only the audit store (streams under {ROOT:?})"
        )));
    };
    // Pryv's forbidden characters in stream ids, and what would end a
    // quoted term.
    if rest.chars().any(|c| {
        matches!(
            c,
            '"' | '\'' | '\\' | '\0' | '\u{8}' | '\t' | '\n' | '\r' | '\u{1a}'
        )
    }) {
        return Err(PryvError::structure(format!(
            "Initial filtering: Error in 'streams' parameter: forbidden character in {stream:?}"
        )));
    }
    Ok(match rest {
        "" | "accesses" | "actions" => None,
        _ => {
            if let Some(access) = rest.strip_prefix("access-") {
                Some(format!("access_id:\"{access}\""))
            } else if let Some(action) = rest.strip_prefix("action-") {
                Some(format!("action:\"{action}\""))
            } else {
                return Err(PryvError::unknown_streams(stream));
            }
        }
    })
}

/// Any of `streams`: `None` when one of them matches everything.
fn any(streams: &[String]) -> Result<Option<String>, PryvError> {
    let mut clauses = Vec::new();
    for stream in streams {
        match clause(stream)? {
            None => return Ok(None),
            Some(c) => clauses.push(c),
        }
    }
    Ok(Some(format!("({})", clauses.join(" OR "))))
}

fn strings(value: &Value, property: &str) -> Result<Vec<String>, PryvError> {
    let bad = || {
        PryvError::structure(format!(
            "Initial filtering: Error in 'streams' parameter: '{property}' must be an array of streamIds"
        ))
    };
    let Value::Array(items) = value else {
        return Err(bad());
    };
    items
        .iter()
        .map(|item| item.as_str().map(str::to_owned).ok_or_else(bad))
        .collect()
}

/// One `{any, all, not}` query, as query text (`None`: every event).
fn stream_query(query: &serde_json::Map<String, Value>) -> Result<Option<String>, PryvError> {
    for key in query.keys() {
        if !matches!(key.as_str(), "any" | "all" | "not") {
            return Err(PryvError::structure(format!(
                "Initial filtering: Error in 'streams' parameter: unknown property '{key}'"
            )));
        }
    }
    let Some(any_of) = query.get("any") else {
        return Err(PryvError::structure(
            "Initial filtering: Error in 'streams' parameter: must contain at least one of 'any' property.",
        ));
    };
    let mut must = Vec::new();
    if let Some(c) = any(&strings(any_of, "any")?)? {
        must.push(c);
    }
    if let Some(all) = query.get("all") {
        for stream in strings(all, "all")? {
            if let Some(c) = clause(&stream)? {
                must.push(c);
            }
        }
    }
    let mut not = Vec::new();
    if let Some(none) = query.get("not") {
        for stream in strings(none, "not")? {
            match clause(&stream)? {
                Some(c) => not.push(c),
                // Not every event: none.
                None => return Ok(Some("(-*)".into())),
            }
        }
    }
    if must.is_empty() && not.is_empty() {
        return Ok(None);
    }
    let mut parts: Vec<String> = must.iter().map(|c| format!("+{c}")).collect();
    if parts.is_empty() {
        // A negative-only query matches nothing in Tantivy: anchor it.
        parts.push("*".into());
    }
    parts.extend(not.iter().map(|c| format!("-{c}")));
    Ok(Some(format!("({})", parts.join(" "))))
}

/// The accesses whose streams (`:_audit:access-X`) the values name, for
/// the permission check of app and shared tokens. Call after
/// `streams_query` accepted them.
pub fn named_accesses(values: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    let mut visit = |text: &str| {
        let mut rest = text;
        while let Some(at) = rest.find(":_audit:access-") {
            let after = &rest[at + ":_audit:access-".len()..];
            let end = after.find(['"', ',', ']', '}']).unwrap_or(after.len());
            found.push(after[..end].to_owned());
            rest = &after[end..];
        }
    };
    for value in values {
        visit(value);
    }
    found
}

/// The `streams` values of a request (repeated or not) as query text:
/// `Ok(None)` for every audit event.
pub fn streams_query(values: &[String]) -> Result<Option<String>, PryvError> {
    let parsed: Value = match values {
        [one] if one.trim_start().starts_with(['[', '{']) => {
            serde_json::from_str(one).map_err(|e| {
                PryvError::structure(format!(
                    "Invalid \"streams\" parameter. It should be an array of streamIds or JSON \
                     logical query. Error while parsing JSON {e}"
                ))
            })?
        }
        _ => Value::Array(values.iter().cloned().map(Value::String).collect()),
    };
    let items = match parsed {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => {
            return Err(PryvError::structure(
                "Invalid \"streams\" parameter. It should be an array of streamIds or JSON logical query.",
            ))
        }
    };
    let (strings, queries): (Vec<&Value>, Vec<&Value>) = items.iter().partition(|v| v.is_string());
    if !strings.is_empty() && !queries.is_empty() {
        return Err(PryvError::structure(
            "Initial filtering: Error in 'streams' parameter: streams queries and streamIds cannot be mixed",
        ));
    }
    if !strings.is_empty() {
        let ids: Vec<String> = strings
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect();
        return any(&ids);
    }
    let mut alternatives = Vec::new();
    for query in queries {
        let Value::Object(query) = query else {
            return Err(PryvError::structure(
                "Initial filtering: Error in 'streams' parameter: must be streamIds or stream queries",
            ));
        };
        match stream_query(query)? {
            None => return Ok(None),
            Some(text) => alternatives.push(text),
        }
    }
    Ok(Some(alternatives.join(" OR ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(values: &[&str]) -> Result<Option<String>, PryvError> {
        streams_query(&values.iter().map(|v| v.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn ids_arrays_and_queries_become_query_text() {
        assert_eq!(q(&[":_audit:"]).unwrap(), None);
        assert_eq!(q(&[r#"[":_audit:accesses"]"#]).unwrap(), None);
        assert_eq!(
            q(&[":_audit:access-a", ":_audit:action-events.get"])
                .unwrap()
                .unwrap(),
            r#"(access_id:"a" OR action:"events.get")"#
        );
        assert_eq!(
            q(&[r#"[{"any":[":_audit:access-a"],"all":[":_audit:action-events.get"],"not":[":_audit:action-x"]}]"#])
                .unwrap()
                .unwrap(),
            r#"(+(access_id:"a") +action:"events.get" -action:"x")"#
        );
        assert_eq!(
            q(&[r#"{"any":[":_audit:"],"not":[":_audit:access-b"]}"#])
                .unwrap()
                .unwrap(),
            r#"(* -access_id:"b")"#
        );
    }

    #[test]
    fn what_pryv_refuses_is_refused() {
        for bad in [
            "diary",
            r#"["diary"]"#,
            r#"{"all":[":_audit:"]}"#,
            r#"{"any":":_audit:"}"#,
            r#"{"any":[":_audit:"],"some":[]}"#,
            r#"[":_audit:", {"any":[":_audit:"]}]"#,
            "[not json",
            r#"[":_audit:access-a\"b"]"#,
        ] {
            let error = q(&[bad]).unwrap_err();
            assert_eq!(error.id, "invalid-request-structure", "{bad}");
        }
        assert_eq!(
            q(&[":_audit:other"]).unwrap_err().id,
            "unknown-referenced-resource"
        );
    }

    #[test]
    fn named_accesses_are_found_in_every_form() {
        let values = [
            ":_audit:access-a".to_owned(),
            r#"[{"any":[":_audit:access-b"],"not":[":_audit:access-c",":_audit:action-x"]}]"#
                .to_owned(),
        ];
        assert_eq!(named_accesses(&values), ["a", "b", "c"]);
    }
}
