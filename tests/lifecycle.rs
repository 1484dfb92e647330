//! Start-up and shutdown as a client sees them: both reflection versions,
//! every health name NOT_SERVING at shutdown, and a clean stop that leaves
//! no indexed records in the write-ahead log.

mod common;

use auditd::proto::WaitFor;
use common::*;
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// The health names the daemon reports.
const HEALTH_NAMES: [&str; 4] = ["", "audit.v1.AuditLog", "audit.v1.Tokens", "auditd.ingest"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_answers_both_v1_and_v1alpha() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();

    use tonic_reflection::pb::v1;
    use tonic_reflection::pb::v1alpha;
    let request = v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
            String::new(),
        )),
    };
    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1: not a list of services")
    };
    let v1_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();

    let request = v1alpha::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut client = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut replies = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        replies.message().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha: not a list of services")
    };
    let v1alpha_names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();

    for names in [&v1_names, &v1alpha_names] {
        assert!(names.iter().any(|n| n == "audit.v1.AuditLog"), "{names:?}");
        assert!(names.iter().any(|n| n == "audit.v1.Tokens"), "{names:?}");
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
    }
    server.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_health_name_turns_not_serving_at_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start(test_config(dir.path())).await;
    let channel = Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watches = Vec::new();
    for name in HEALTH_NAMES {
        let mut updates = HealthClient::new(channel.clone())
            .watch(HealthCheckRequest {
                service: name.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let first = updates.message().await.unwrap().expect("a first status");
        assert_eq!(first.status, ServingStatus::Serving as i32, "{name:?}");
        watches.push((name, updates));
    }

    let stopping = tokio::spawn(server.stop());
    for (name, mut updates) in watches {
        let not_serving = tokio::time::timeout(DEADLINE, async {
            while let Ok(Some(update)) = updates.message().await {
                if update.status == ServingStatus::NotServing as i32 {
                    return true;
                }
            }
            false
        })
        .await
        .unwrap_or(false);
        assert!(not_serving, "{name:?} never said NOT_SERVING at shutdown");
    }
    stopping.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_leaves_no_indexed_records_in_the_wal() {
    let dir = tempfile::tempdir().unwrap();
    let wal_bytes = || -> u64 {
        std::fs::read_dir(dir.path().join("wal"))
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    };
    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    let events = generated(20_000, 21, 20_000);
    for batch in events.chunks(1_000) {
        ingest(&mut client, batch.to_vec(), WaitFor::Durable).await;
    }
    assert!(wal_bytes() > 1 << 20, "{} bytes of WAL", wal_bytes());
    // At once: no idle period in which the WAL thread could retire the
    // segment by itself.
    server.stop().await.unwrap();
    assert_eq!(
        wal_bytes(),
        auditd::wal::segment::MAGIC.len() as u64,
        "only an empty segment's header is left"
    );

    let server = TestServer::start(test_config(dir.path())).await;
    let mut client = server.client().await;
    assert_eq!(count_stored(&mut client).await, 20_000, "nothing lost");
    server.stop().await.unwrap();
}
