//! schemathesis (from PyPI; `scripts/test.sh` installs it) against the
//! served `/v1/openapi.json`: generated requests for every operation, for
//! a bounded time, and not one 5xx nor one answer outside the document
//! (status, content type, headers, body schema).
//!
//! Left out: `/v1/tail` (an SSE stream never ends, so no check could
//! complete) and `DELETE /v1/tokens/{id}` (its stateful links would revoke
//! the admin token the run itself uses); `tests/http_api.rs` covers both.

mod common;

use std::process::Command;

use common::*;

/// How long schemathesis generates requests.
const FUZZ_SECONDS: &str = "60";

/// The one `scripts/test.sh` installs, else one on the PATH.
fn schemathesis() -> std::path::PathBuf {
    let installed = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/test-tools/venv/bin/schemathesis");
    if installed.exists() {
        installed
    } else {
        "schemathesis".into()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_requests_get_no_5xx_and_match_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let mut grpc = server.client().await;
    ingest(
        &mut grpc,
        generated(200, 5, 100),
        auditd::proto::WaitFor::Searchable,
    )
    .await;
    let url = format!("http://{}/v1/openapi.json", server.http);
    let auth = format!("Authorization: Bearer {}", server.admin_token().trim());
    let run = tokio::task::spawn_blocking(move || {
        Command::new(schemathesis())
            .args(["run", &url, "-H", &auth])
            .args([
                "--checks",
                "not_a_server_error,status_code_conformance,content_type_conformance,\
                 response_headers_conformance,response_schema_conformance",
                "--max-time",
                FUZZ_SECONDS,
                "--exclude-path",
                "/v1/tail",
                "--exclude-method",
                "DELETE",
                "--workers",
                "2",
            ])
            .env("NO_COLOR", "1")
            .output()
    })
    .await
    .unwrap()
    .unwrap_or_else(|e| {
        panic!("schemathesis could not start ({e}): run scripts/test.sh, which installs it")
    });
    let report = String::from_utf8_lossy(&run.stdout);
    assert!(
        run.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(
        report.contains("generated"),
        "schemathesis ran no test case:\n{report}"
    );
    server.stop().await.unwrap();
}
