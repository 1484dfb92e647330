//! Query parameters: the filters of `GET /v1/events`, `/v1/tail` and
//! `/v1/export`, read strictly. An unknown parameter, a repeated single
//! one or a value that does not parse is a 400 naming the field as gRPC
//! names it (`from_time`, `access_ids`), so a problem reads the same over
//! both transports.

use crate::formats::Format;
use crate::json::parse_time;
use crate::proto::{EventFilter, ExportRequest, Outcome, SearchRequest, TailRequest};

use super::problem::Problem;

/// The query string's pairs, taken one name at a time; what is left at
/// the end was not understood.
pub struct Params {
    pairs: Vec<(String, String)>,
    /// Every name a route asked for, in order: what the OpenAPI document
    /// must list (checked by the tests).
    asked: Vec<String>,
}

impl Params {
    pub fn parse(query: Option<&str>) -> Params {
        let pairs = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Params {
            pairs,
            asked: Vec::new(),
        }
    }

    /// Every value of `name`, in order.
    pub fn all(&mut self, name: &str) -> Vec<String> {
        self.asked.push(name.to_owned());
        let (taken, rest) = std::mem::take(&mut self.pairs)
            .into_iter()
            .partition(|(k, _)| k == name);
        self.pairs = rest;
        taken.into_iter().map(|(_, v)| v).collect()
    }

    /// The one value of `name`, if given; `field` names it in errors.
    pub fn one(&mut self, name: &str, field: &str) -> Result<Option<String>, Problem> {
        let mut values = self.all(name);
        match values.len() {
            0 => Ok(None),
            1 => Ok(values.pop()),
            _ => Err(Problem::invalid(
                field,
                format!("{name} given more than once"),
            )),
        }
    }

    /// The one value of `name`, parsed by `parse`.
    pub fn parsed<T>(
        &mut self,
        name: &str,
        field: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, Problem> {
        self.one(name, field)?
            .map(|value| parse(&value).map_err(|reason| Problem::invalid(field, reason)))
            .transpose()
    }

    /// A flag: absent, empty, `true` or `1` (set), `false` or `0`.
    pub fn flag(&mut self, name: &str, field: &str) -> Result<bool, Problem> {
        Ok(self.parsed(name, field, parse_bool)?.unwrap_or(false))
    }

    /// The pairs no one took yet.
    pub fn remaining(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Fails on the first parameter no one took.
    pub fn finish(self) -> Result<(), Problem> {
        match self.pairs.into_iter().next() {
            None => Ok(()),
            Some((name, _)) => Err(Problem::invalid(name, "unknown query parameter")),
        }
    }
}

fn parse_bool(value: &str) -> Result<bool, String> {
    match value {
        "" | "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(format!("{value:?} is not true or false")),
    }
}

fn parse_number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{value:?} is not a number in range"))
}

/// `success`, `failure` or `any`, as in `auditctl --outcome`.
pub fn parse_outcome(value: &str) -> Result<Outcome, String> {
    match value.to_ascii_lowercase().as_str() {
        "" | "any" => Ok(Outcome::Any),
        "success" => Ok(Outcome::Success),
        "failure" => Ok(Outcome::Failure),
        _ => Err(format!("{value:?} is not success, failure or any")),
    }
}

/// The filter parameters. Lists take the singular name, repeated
/// (`action=a&action=b`), as the HTTP routes document them.
pub fn filter(params: &mut Params) -> Result<EventFilter, Problem> {
    Ok(EventFilter {
        from_time: params.parsed("fromTime", "from_time", parse_time)?,
        to_time: params.parsed("toTime", "to_time", parse_time)?,
        actions: params.all("action"),
        access_ids: params.all("accessId"),
        subjects: params.all("subject"),
        ips: params.all("ip"),
        status_min: params.parsed("statusMin", "status_min", parse_number)?,
        status_max: params.parsed("statusMax", "status_max", parse_number)?,
        outcome: params
            .parsed("outcome", "outcome", parse_outcome)?
            .unwrap_or(Outcome::Any) as i32,
        types: params.all("type"),
        source_names: params.all("sourceName"),
        text: params.one("text", "text")?.unwrap_or_default(),
        query: params.one("query", "query")?.unwrap_or_default(),
    })
}

/// `GET /v1/events`: the filter plus the page's own parameters.
pub fn search_request(query: Option<&str>) -> Result<SearchRequest, Problem> {
    let mut params = Params::parse(query);
    let request = search_params(&mut params)?;
    params.finish()?;
    Ok(request)
}

fn search_params(params: &mut Params) -> Result<SearchRequest, Problem> {
    let filter = filter(params)?;
    Ok(SearchRequest {
        limit: params.parsed("limit", "limit", parse_number)?.unwrap_or(0),
        ascending: params.flag("ascending", "ascending")?,
        page_token: params.one("pageToken", "page_token")?.unwrap_or_default(),
        exact_total: params.flag("exactTotal", "exact_total")?,
        ..crate::search::request_of(filter)
    })
}

/// `GET /v1/tail`: the filter, and where to resume (`Last-Event-ID`
/// first, else `resumeToken`).
pub fn tail_request(
    query: Option<&str>,
    last_event_id: Option<&str>,
) -> Result<TailRequest, Problem> {
    let mut params = Params::parse(query);
    let request = tail_params(&mut params, last_event_id)?;
    params.finish()?;
    Ok(request)
}

fn tail_params(params: &mut Params, last_event_id: Option<&str>) -> Result<TailRequest, Problem> {
    let filter = filter(params)?;
    let from_query = params.one("resumeToken", "resume_token")?;
    Ok(TailRequest {
        filter: Some(filter),
        resume_token: last_event_id
            .map(str::to_owned)
            .or(from_query)
            .unwrap_or_default(),
    })
}

/// `GET /v1/export`: the filter, the format (default NDJSON), the order
/// and where to resume.
pub fn export_request(query: Option<&str>) -> Result<(ExportRequest, Format), Problem> {
    let mut params = Params::parse(query);
    let request = export_params(&mut params)?;
    params.finish()?;
    Ok(request)
}

fn export_params(params: &mut Params) -> Result<(ExportRequest, Format), Problem> {
    let filter = filter(params)?;
    let format = params
        .parsed("format", "format", |name| {
            Format::parse(name)
                .ok_or_else(|| format!("{name:?} is not one of ndjson, ocsf, ecs, cef and csv"))
        })?
        .unwrap_or(Format::Ndjson);
    let request = ExportRequest {
        filter: Some(filter),
        format: format.to_proto() as i32,
        ascending: params.flag("ascending", "ascending")?,
        resume_token: params
            .one("resumeToken", "resume_token")?
            .unwrap_or_default(),
    };
    Ok((request, format))
}

/// The filter parameters, as the OpenAPI document lists them. Reading is
/// `filter`'s; a test keeps the two in step.
#[allow(dead_code)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct FilterParams {
    /// Inclusive: seconds since the epoch or RFC 3339.
    from_time: Option<String>,
    /// Exclusive: seconds since the epoch or RFC 3339.
    to_time: Option<String>,
    /// Exact, or a prefix ending in `*`; repeat for any of several.
    #[param(rename = "action")]
    actions: Option<Vec<String>>,
    #[param(rename = "accessId")]
    access_ids: Option<Vec<String>>,
    #[param(rename = "subject")]
    subjects: Option<Vec<String>>,
    /// An address or a CIDR block.
    #[param(rename = "ip")]
    ips: Option<Vec<String>>,
    /// Inclusive.
    status_min: Option<i32>,
    /// Inclusive.
    status_max: Option<i32>,
    /// `success` (0 < status < 400), `failure` (>= 400) or `any`.
    outcome: Option<String>,
    #[param(rename = "type")]
    types: Option<Vec<String>>,
    #[param(rename = "sourceName")]
    source_names: Option<Vec<String>>,
    /// Free text: every word must match.
    text: Option<String>,
    /// Tantivy query syntax over the field names.
    query: Option<String>,
}

/// Search's own parameters, beside the filter's.
#[allow(dead_code)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct PageParams {
    /// Default 100, capped by `limits.max_search_limit`.
    limit: Option<u32>,
    /// Oldest first.
    ascending: Option<bool>,
    /// From a previous answer's `nextPageToken`.
    page_token: Option<String>,
    /// Count every match, however many.
    exact_total: Option<bool>,
}

/// Tail's own parameter, beside the filter's.
#[allow(dead_code)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct TailParams {
    /// An event's SSE id: continue right after it (`Last-Event-ID` wins).
    resume_token: Option<String>,
}

/// Export's own parameters, beside the filter's.
#[allow(dead_code)]
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query, rename_all = "camelCase")]
pub struct ExportParams {
    /// `ndjson` (default), `ocsf`, `ecs`, `cef` or `csv`.
    format: Option<String>,
    /// Oldest first.
    ascending: Option<bool>,
    /// From an earlier export: continue right after it.
    resume_token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use utoipa::IntoParams;

    fn documented<P: IntoParams>() -> Vec<String> {
        P::into_params(|| None)
            .into_iter()
            .map(|p| p.name)
            .collect()
    }

    #[test]
    fn the_openapi_parameters_are_the_ones_read() {
        let mut params = Params::parse(None);
        filter(&mut params).unwrap();
        assert_eq!(params.asked, documented::<FilterParams>());
        let mut params = Params::parse(None);
        search_params(&mut params).unwrap();
        let mut both = documented::<FilterParams>();
        both.extend(documented::<PageParams>());
        assert_eq!(params.asked, both);
        let mut params = Params::parse(None);
        tail_params(&mut params, None).unwrap();
        let mut both = documented::<FilterParams>();
        both.extend(documented::<TailParams>());
        assert_eq!(params.asked, both);
        let mut params = Params::parse(None);
        export_params(&mut params).unwrap();
        let mut both = documented::<FilterParams>();
        both.extend(documented::<ExportParams>());
        assert_eq!(params.asked, both);
    }

    #[test]
    fn every_search_parameter_lands_in_its_field() {
        let request = search_request(Some(
            "fromTime=1700000000&toTime=2026-12-02T00:00:00Z&action=a&action=b.*\
             &accessId=x&subject=s&ip=10.0.0.0%2F8&type=t&sourceName=http\
             &statusMin=400&statusMax=499&outcome=failure&text=two+words\
             &query=status:403&limit=5&ascending=true&pageToken=p&exactTotal",
        ))
        .unwrap();
        assert_eq!(request.from_time.unwrap().seconds, 1_700_000_000);
        assert_eq!(request.to_time.unwrap().seconds, 1_796_169_600);
        assert_eq!(request.actions, ["a", "b.*"]);
        assert_eq!(request.ips, ["10.0.0.0/8"]);
        assert_eq!(
            (request.status_min, request.status_max),
            (Some(400), Some(499))
        );
        assert_eq!(request.outcome, Outcome::Failure as i32);
        assert_eq!(request.text, "two words");
        assert_eq!(request.limit, 5);
        assert!(request.ascending && request.exact_total);
        assert_eq!(request.page_token, "p");
    }

    #[test]
    fn bad_parameters_name_the_grpc_field() {
        for (query, field) in [
            ("fromTime=yesterday", "from_time"),
            ("limit=-1", "limit"),
            ("limit=1&limit=2", "limit"),
            ("statusMin=abc", "status_min"),
            ("outcome=maybe", "outcome"),
            ("ascending=yes", "ascending"),
            ("acessId=typo", "acessId"),
        ] {
            let problem = search_request(Some(query)).unwrap_err();
            assert!(
                format!("{problem:?}").contains(&format!("field: \"{field}\"")),
                "{query}: {problem:?}"
            );
        }
    }
}
