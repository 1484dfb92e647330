//! The search page in a real browser: Debian's headless Chromium, driven
//! through chromedriver (WebDriver) by fantoccini. `scripts/test.sh`
//! installs both packages when they are missing.
//!
//! One walk through the page, as a compliance officer would take it: sign
//! in, filter by action and CIDR (rows and total checked against the API),
//! open an event, drag on the histogram, export a CSV, follow live, sign
//! out. Along the way: events whose fields hold HTML are shown as text and
//! run nothing, and axe-core finds no critical accessibility violation.
//! The screenshot it takes is the README's (`target/web/search-page.png`,
//! copied to `docs/search-page.png`).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use auditd::proto::{AuditEvent, Source, WaitFor};
use common::*;
use fantoccini::actions::{InputSource, MouseActions, PointerAction, MOUSE_BUTTON_LEFT};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Markup an attacker could put in any field of an audited call.
const IMG_PAYLOAD: &str = "<img src=x onerror=\"window.__xss=(window.__xss||0)+1\">";
const SCRIPT_PAYLOAD: &str = "<script>window.__xss=(window.__xss||0)+1</script>";

/// chromedriver on a free loopback port, killed on drop.
struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser(profile: &Path, downloads: &Path) -> (Driver, Browser) {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run scripts/test.sh, which installs Debian's chromium and chromium-driver"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts"),
    );
    let capabilities = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            // Headless, and nothing that reaches for the network.
            "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync",
                "--window-size=1440,1000",
                format!("--user-data-dir={}", profile.display()),
            ],
            "prefs": {
                "download.default_directory": downloads.display().to_string(),
                "download.prompt_for_download": false,
            },
        }
    });
    let Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        match ClientBuilder::new(connector)
            .capabilities(capabilities.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(client) => return (driver, client),
            Err(error) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "no WebDriver session: {error}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// 400 events spread over the last 20 hours, plus two whose fields hold
/// markup.
fn dataset() -> Vec<AuditEvent> {
    let actions = [
        "auth.login",
        "events.get",
        "streams.update",
        "accesses.create",
    ];
    let statuses = [200, 200, 201, 401, 403, 500];
    let start = now() - 20 * 3600;
    let mut events: Vec<AuditEvent> = (0..400)
        .map(|i: i64| {
            let action = actions[(i % 4) as usize];
            let ip = if i % 3 == 0 {
                format!("10.1.{}.{}", i % 7, i % 250)
            } else {
                format!("192.168.{}.{}", i % 5, i % 250)
            };
            AuditEvent {
                id: format!("ev-{i:04}"),
                time: Some(prost_types::Timestamp {
                    seconds: start + i * 180,
                    nanos: 0,
                }),
                r#type: "audit-log/pryv-api".into(),
                action: action.into(),
                access_id: format!("acc-{}", i % 6),
                subject: format!("user-{}", i % 9),
                source: Some(Source {
                    name: "http".into(),
                    ip,
                }),
                resource: format!("/streams/diary-{}", i % 4),
                status: statuses[((i / 3) % 6) as usize],
                before: if action == "streams.update" {
                    format!(r#"{{"name":"diary","size":{i}}}"#)
                } else {
                    String::new()
                },
                after: if action == "streams.update" {
                    format!(r#"{{"name":"diary","size":{}}}"#, i + 1)
                } else {
                    String::new()
                },
                ..Default::default()
            }
        })
        .collect();
    for (n, payload) in [IMG_PAYLOAD, SCRIPT_PAYLOAD].into_iter().enumerate() {
        events.push(AuditEvent {
            id: format!("hostile-{n}"),
            time: Some(prost_types::Timestamp {
                seconds: now() - 60,
                nanos: 0,
            }),
            r#type: "audit-log/pryv-api".into(),
            action: "auth.login".into(),
            access_id: payload.into(),
            subject: payload.into(),
            resource: payload.into(),
            source: Some(Source {
                name: "http".into(),
                ip: "10.1.9.9".into(),
            }),
            status: 401,
            error_message: payload.into(),
            before: format!(r#"{{"html":{}}}"#, serde_json::to_string(payload).unwrap()),
            after: "{}".into(),
            attributes: [("userAgent".to_owned(), payload.to_owned())].into(),
            ..Default::default()
        });
    }
    events
}

/// Runs `script` until it returns true.
async fn until(browser: &Browser, what: &str, script: &str) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let value = browser.execute(script, vec![]).await.unwrap();
        if value == Value::Bool(true) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn searches_done(browser: &Browser) -> u64 {
    let value = browser
        .execute(
            "return Number(document.body.dataset.searches || 0);",
            vec![],
        )
        .await
        .unwrap();
    value.as_u64().unwrap_or(0)
}

/// Waits until the page has finished one more search than `before`.
async fn next_search(browser: &Browser, before: u64) {
    until(
        browser,
        "the page's search",
        &format!("return Number(document.body.dataset.searches || 0) > {before};"),
    )
    .await;
}

async fn text_of(browser: &Browser, css: &str) -> String {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn rows(browser: &Browser) -> Vec<String> {
    let value = browser
        .execute(
            "return [...document.querySelectorAll('#results-body tr')].map(r => r.dataset.id);",
            vec![],
        )
        .await
        .unwrap();
    serde_json::from_value(value).unwrap()
}

/// The page's own view of its filter, as the query of `/v1/events`.
async fn page_filter(browser: &Browser) -> String {
    let value = browser
        .execute(
            "const p = new URLSearchParams(location.search); const q = new URLSearchParams(); \
             if (p.get('from')) q.set('fromTime', p.get('from')); \
             if (p.get('to')) q.set('toTime', p.get('to')); \
             for (const [k, n] of [['action','action'],['ip','ip'],['access','accessId'],['subject','subject'],['outcome','outcome']]) \
               if (p.get(k)) q.set(n, p.get(k)); \
             return q.toString();",
            vec![],
        )
        .await
        .unwrap();
    value.as_str().unwrap().to_owned()
}

async fn api_total(server: &TestServer, query: &str) -> u64 {
    let response = reqwest::Client::new()
        .get(format!(
            "http://{}/v1/events?{query}&exactTotal",
            server.http
        ))
        .bearer_auth(server.admin_token().trim())
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    body["totalHits"].as_u64().unwrap()
}

async fn set(browser: &Browser, css: &str, value: &str) {
    let field = browser.find(Locator::Css(css)).await.unwrap();
    field.clear().await.unwrap();
    field.send_keys(value).await.unwrap();
}

async fn click(browser: &Browser, css: &str) {
    browser
        .find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

fn target_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/web")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compliance_officer_searches_from_the_browser() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut grpc = server.client().await;
    ingest(&mut grpc, dataset(), WaitFor::Searchable).await;
    let (profile, downloads) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (_driver, browser) = browser(profile.path(), downloads.path()).await;
    let base = format!("http://{}", server.http);

    // The sign-in form, then the hooks that would record any script the
    // data managed to run: a flag the payloads set, CSP violations, and
    // any <script> or <img> added to the page.
    browser.goto(&format!("{base}/")).await.unwrap();
    browser
        .wait()
        .for_element(Locator::Css("#token"))
        .await
        .unwrap();
    browser
        .execute(
            "window.__violations = []; \
             document.addEventListener('securitypolicyviolation', e => window.__violations.push(e.violatedDirective + ' ' + e.blockedURI)); \
             window.__injected = []; \
             new MutationObserver(ms => { for (const m of ms) for (const n of m.addedNodes) \
               if (n.nodeType === 1 && (n.matches('script, img, iframe') || n.querySelector('script, img, iframe'))) \
                 window.__injected.push(n.outerHTML); }).observe(document, {subtree: true, childList: true});",
            vec![],
        )
        .await
        .unwrap();

    // Sign in: the last 24 hours, everything.
    let before = searches_done(&browser).await;
    set(&browser, "#token", server.admin_token().trim()).await;
    click(&browser, "#sign-in-form button[type=submit]").await;
    next_search(&browser, before).await;
    let stored = stored_token(&browser).await;
    assert_eq!(
        stored,
        server.admin_token().trim(),
        "the token lives in session storage"
    );
    let cookies = browser
        .execute("return document.cookie;", vec![])
        .await
        .unwrap();
    assert_eq!(cookies, "", "and never in a cookie");
    assert_eq!(rows(&browser).await.len(), 50, "one page of 50 rows");
    // 402 events, and the trail of the page's own reads.
    let all: u64 = text_of(&browser, "#total")
        .await
        .trim_end_matches(" matches")
        .replace(',', "")
        .parse()
        .unwrap();
    assert!(all >= 402, "{all}");

    // Filter by action and CIDR: the rows and the total are the API's.
    let before = searches_done(&browser).await;
    set(&browser, "#action", "auth.login").await;
    set(&browser, "#ip", "10.1.0.0/16").await;
    click(&browser, "#filters button[type=submit]").await;
    next_search(&browser, before).await;
    let url = browser.current_url().await.unwrap();
    assert!(url.query().unwrap().contains("action=auth.login"), "{url}");
    let total = api_total(
        &server,
        &format!(
            "fromTime={}&action=auth.login&ip=10.1.0.0/16",
            now() - 86_400
        ),
    )
    .await;
    assert!(total > 2, "the filter matches some events");
    assert_eq!(rows(&browser).await.len() as u64, total.min(50));
    assert_eq!(
        text_of(&browser, "#total").await,
        format!("{total} matches")
    );

    // Hostile fields are text: the payloads show literally, ran nothing.
    let shown = browser
        .execute(
            "return document.getElementById('results-body').textContent;",
            vec![],
        )
        .await
        .unwrap();
    assert!(shown.as_str().unwrap().contains(IMG_PAYLOAD));
    assert!(shown.as_str().unwrap().contains(SCRIPT_PAYLOAD));

    // An event's detail: every field; before and after as a diff.
    browser
        .find(Locator::Css("#results-body tr[data-id='hostile-0']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    until(
        &browser,
        "the detail",
        "return !document.getElementById('detail').hidden;",
    )
    .await;
    assert_eq!(text_of(&browser, "#detail-title").await, "Event hostile-0");
    let detail = text_of(&browser, "#detail-fields").await;
    assert!(detail.contains("attributes.userAgent"), "{detail}");
    assert!(detail.contains(IMG_PAYLOAD), "{detail}");
    let diff = text_of(&browser, "#detail-diff").await;
    assert!(diff.contains("- {") && diff.contains("+ {}"), "{diff}");
    let injected = browser
        .execute(
            "return [window.__xss || 0, window.__violations, window.__injected];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(
        injected,
        json!([0, [], []]),
        "no markup from the data ran or was added"
    );

    // Drag across the middle of the histogram: a narrower, custom range.
    let chart = browser.find(Locator::Css("#histogram")).await.unwrap();
    let before = searches_done(&browser).await;
    let drag = MouseActions::new("mouse".into())
        .then(PointerAction::MoveToElement {
            element: chart.clone(),
            duration: None,
            x: -300.0,
            y: 0.0,
        })
        .then(PointerAction::Down {
            button: MOUSE_BUTTON_LEFT,
        })
        .then(PointerAction::MoveToElement {
            element: chart,
            duration: Some(Duration::from_millis(200)),
            x: 200.0,
            y: 0.0,
        })
        .then(PointerAction::Up {
            button: MOUSE_BUTTON_LEFT,
        });
    browser.perform_actions(drag).await.unwrap();
    next_search(&browser, before).await;
    let url = browser.current_url().await.unwrap();
    let query = url.query().unwrap().to_owned();
    assert!(query.contains("range=custom"), "{query}");
    let filter = page_filter(&browser).await;
    assert!(
        filter.contains("fromTime=") && filter.contains("toTime="),
        "{filter}"
    );
    let narrowed = api_total(&server, &filter).await;
    assert!(
        narrowed < total,
        "the drag narrowed the range: {narrowed} of {total}"
    );
    assert_eq!(
        text_of(&browser, "#total").await,
        format!("{narrowed} matches")
    );

    // Export the narrowed view as CSV: a header and one line per match.
    click(&browser, "#export").await;
    let file = downloads.path().join("auditd-export.csv");
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !file.exists() {
        assert!(tokio::time::Instant::now() < deadline, "no CSV downloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let csv = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].starts_with("id,time,"), "{}", lines[0]);
    assert_eq!(lines.len() as u64 - 1, narrowed);

    // Live: a new matching event appears at the top without a search.
    click(&browser, "#live").await;
    until(
        &browser,
        "the live tail",
        "return document.body.dataset.live === 'following';",
    )
    .await;
    let mut live = dataset().swap_remove(0);
    live.id = "live-1".into();
    live.time = None;
    live.action = "auth.login".into();
    live.source.as_mut().unwrap().ip = "10.1.200.1".into();
    ingest(&mut grpc, vec![live], WaitFor::Durable).await;
    until(
        &browser,
        "the live event",
        "return document.querySelector('#results-body tr')?.dataset.id === 'live-1';",
    )
    .await;
    click(&browser, "#live").await;

    // axe-core (vendored for this test only): no critical violation.
    browser
        .execute(include_str!("fixtures/axe/axe.min.js"), vec![])
        .await
        .unwrap();
    let axe = browser
        .execute_async(
            "const done = arguments[arguments.length - 1]; \
             axe.run(document).then(r => done(r.violations.map(v => [v.impact, v.id, v.nodes.length])));",
            vec![],
        )
        .await
        .unwrap();
    let violations: Vec<(Option<String>, String, u64)> = serde_json::from_value(axe).unwrap();
    let critical: Vec<_> = violations
        .iter()
        .filter(|(impact, ..)| impact.as_deref() == Some("critical"))
        .collect();
    assert!(critical.is_empty(), "axe: {violations:?}");
    if !violations.is_empty() {
        eprintln!("axe, not critical: {violations:?}");
    }

    // The README's screenshot: the failed logins of one address range,
    // one event open.
    browser
        .goto(&format!(
            "{base}/?range=24h&action=auth.login&outcome=failure&ip=10.1.0.0%2F16"
        ))
        .await
        .unwrap();
    // A fresh page: its first search.
    next_search(&browser, 0).await;
    browser
        .execute(
            "document.querySelector('#results-body tr[data-id^=ev-]').click();",
            vec![],
        )
        .await
        .unwrap();
    until(
        &browser,
        "the detail",
        "return !document.getElementById('detail').hidden;",
    )
    .await;
    let png = browser.screenshot().await.unwrap();
    std::fs::create_dir_all(target_dir()).unwrap();
    std::fs::write(target_dir().join("search-page.png"), png).unwrap();

    // Sign out: the token is gone and the form is back.
    click(&browser, "#sign-out").await;
    until(
        &browser,
        "the sign-in form",
        "return !document.getElementById('sign-in').hidden;",
    )
    .await;
    assert_eq!(stored_token(&browser).await, "");

    browser.close().await.unwrap();
    server.stop().await.unwrap();
}

async fn stored_token(browser: &Browser) -> String {
    let value = browser
        .execute(
            "return sessionStorage.getItem('auditd.token') || '';",
            vec![],
        )
        .await
        .unwrap();
    value.as_str().unwrap().to_owned()
}
