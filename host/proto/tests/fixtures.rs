//! Frozen frames of the protocol: `tests/fixtures/*.bin` holds one committed
//! frame (header included) per message below: a `Hello`, a request and a
//! response of every operation, and an error response of every error.
//!
//! Every later version of `cairn-proto` must still decode these files to the
//! same values and encode those values to the same bytes. A change that
//! breaks this breaks deployed clients or nodes: add variants and fields at
//! the end instead (and bump `PROTOCOL_VERSION` when a layout must change).
//! Only for a new message, or a deliberate protocol version bump, regenerate
//! with `CAIRN_BLESS_FIXTURES=1 cargo test -p cairn-proto --test fixtures`
//! and commit the new files.

use std::path::PathBuf;

use cairn_proto::{
    ApiError, ClusterStatus, DeployAction, DeployOutcome, DeployRecord, EventView, GuestFaultKind,
    HEADER_LEN, MAX_FRAME, MemberStatus, PROTOCOL_VERSION, Payload, ReplayFailure, Request,
    Response, StateAt, StateDifference, TypeInfo, ValidationReport, body_len, decode, encode,
};

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

fn report() -> ValidationReport {
    ValidationReport {
        sampled: 2,
        events: 7,
        from_snapshot: 1,
        millis: 12,
        failures: vec![ReplayFailure {
            entity_id: "acct-1".into(),
            seq: 3,
            error: "cannot decode event: unknown variant `Withdrawn`".into(),
        }],
        failed: 1,
        differences: vec![StateDifference {
            entity_id: "acct-2".into(),
            seq: 4,
            active: r#"{"balance":70}"#.into(),
            candidate: r#"{"cents":7000}"#.into(),
        }],
        differing: 1,
        exemplars: 3,
        exemplars_not_kept: 0,
    }
}

fn type_info() -> TypeInfo {
    TypeInfo {
        entity_type: "bank-account".into(),
        deploy: 2,
        behavior: "bank-account".into(),
        behavior_version: "2.0.0".into(),
        state_schema: 1,
        hash: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        deployed_ms: 1_764_000_000_000,
        live_entities: 5,
    }
}

fn event() -> EventView {
    EventView {
        entity_type: "bank-account".into(),
        entity_id: "acct-1".into(),
        seq: 1,
        timestamp_ms: 1_764_000_000_123,
        behavior_version: "1.0.0".into(),
        json: Some(r#"{"Deposited":{"amount":100}}"#.into()),
        bytes: vec![0, 100],
    }
}

fn ty() -> String {
    "bank-account".into()
}

fn id() -> String {
    "acct-1".into()
}

/// Every request fixture: file name (without `.bin`) and value.
fn requests() -> Vec<(&'static str, Request)> {
    vec![
        ("request-hello", Request::Hello { version: 2 }),
        (
            "request-deploy",
            Request::Deploy {
                entity_type: ty(),
                wasm: b"\0asm\x0d\0\x01\0".to_vec(),
                check: false,
            },
        ),
        ("request-versions", Request::Versions { entity_type: ty() }),
        (
            "request-rollback",
            Request::Rollback {
                entity_type: ty(),
                to: Some(1),
            },
        ),
        (
            "request-ask",
            Request::Ask {
                entity_type: ty(),
                entity_id: id(),
                command: Payload::Json(r#"{"Deposit":{"amount":100}}"#.into()),
                expected_seq: Some(3),
                timeout_ms: Some(5000),
            },
        ),
        (
            "request-tell",
            Request::Tell {
                entity_type: ty(),
                entity_id: id(),
                command: Payload::Bytes(vec![1, 2, 3]),
            },
        ),
        (
            "request-events",
            Request::Events {
                entity_type: ty(),
                entity_id: id(),
                from: 1,
                to: u64::MAX,
                limit: 1000,
            },
        ),
        (
            "request-state",
            Request::State {
                entity_type: ty(),
                entity_id: id(),
                at: StateAt::Seq(5),
            },
        ),
        ("request-types", Request::Types),
        (
            "request-encode-command",
            Request::EncodeCommand {
                entity_type: ty(),
                json: r#"{"Deposit":{"amount":1}}"#.into(),
            },
        ),
        ("request-follow-lifecycle", Request::FollowLifecycle),
        ("request-cluster-status", Request::ClusterStatus),
        ("request-cluster-leave", Request::ClusterLeave),
        (
            "request-deliver",
            Request::Deliver {
                entity_type: "counter".into(),
                entity_id: "c-7".into(),
                command: vec![1, 2, 3],
                from_type: "counter".into(),
                from_id: "c-3".into(),
                send: 12,
            },
        ),
        (
            "request-follow-events",
            Request::FollowEvents {
                entity_type: ty(),
                cursor: 42,
            },
        ),
        (
            "request-deploy-progress",
            Request::DeployProgress { entity_type: ty() },
        ),
    ]
}

/// Every response fixture: file name (without `.bin`) and value.
fn responses() -> Vec<(&'static str, Response)> {
    let mut v = vec![
        (
            "response-hello",
            Response::Welcome {
                version: 2,
                node: "node-1".into(),
            },
        ),
        (
            "response-deploy",
            Response::Deployed {
                info: Some(type_info()),
                changed: true,
                report: ValidationReport::default(),
            },
        ),
        (
            "response-versions",
            Response::Versions {
                versions: vec![type_info()],
                active: Some(2),
                history: vec![DeployRecord {
                    entity_type: ty(),
                    action: DeployAction::Deploy,
                    deploy: Some(2),
                    hash: type_info().hash,
                    behavior_version: "2.0.0".into(),
                    at_ms: 1_764_000_000_000,
                    outcome: DeployOutcome::Activated,
                    report: report(),
                }],
            },
        ),
        (
            "response-rollback",
            Response::Deployed {
                info: Some(type_info()),
                changed: false,
                report: report(),
            },
        ),
        (
            "response-ask",
            Response::Reply {
                reply: Some(Payload::Json("\"ok\"".into())),
                seq: 4,
            },
        ),
        ("response-tell", Response::Queued),
        ("response-events", Response::Events(vec![event()])),
        (
            "response-state",
            Response::State {
                json: r#"{"balance":50,"transactions":5}"#.into(),
                seq: 5,
                replayed: 5,
            },
        ),
        ("response-types", Response::Types(vec![type_info()])),
        (
            "response-cluster-status",
            Response::ClusterStatus(ClusterStatus {
                node: 7,
                leader: Some(7),
                shards: 256,
                epoch: 300,
                members: vec![MemberStatus {
                    id: 7,
                    addr: "127.0.0.1:7420".into(),
                    state: "up".into(),
                    reachable: true,
                    phi: 0.25,
                    shards: 128,
                    unready: 3,
                    voter: true,
                    live_entities: Some(12),
                    active: vec![("bank-account".into(), 2, "ab".repeat(32))],
                }],
                owners: vec![7, 7, 0],
            }),
        ),
        ("response-cluster-leave", Response::Leaving),
        (
            "response-deploy-progress",
            Response::DeployProgress {
                phase: Some("validating against history: replaying entities".into()),
                done: 12,
                total: 100,
                elapsed_ms: 1_500,
            },
        ),
        (
            "response-deploy-progress-none",
            Response::DeployProgress {
                phase: None,
                done: 0,
                total: 0,
                elapsed_ms: 0,
            },
        ),
        ("response-encode-command", Response::Encoded(vec![0, 1])),
        ("response-following", Response::Following),
        (
            "response-follow-lifecycle",
            Response::Lifecycle {
                kind: "started".into(),
                entity_type: ty(),
                entity_id: Some(id()),
                detail: "seq=3 replayed=3 snapshot=none".into(),
            },
        ),
        ("response-lagged", Response::Lagged(17)),
        (
            "response-follow-events",
            Response::Feed {
                events: vec![event()],
                next: 43,
            },
        ),
    ];
    for (name, e) in errors() {
        v.push((name, Response::Error(e)));
    }
    v
}

/// One error response of every [`ApiError`] variant.
fn errors() -> Vec<(&'static str, ApiError)> {
    vec![
        ("error-busy", ApiError::Busy("too many requests".into())),
        (
            "error-unknown-entity-type",
            ApiError::UnknownEntityType("nope".into()),
        ),
        (
            "error-bad-request",
            ApiError::BadRequest("protocol version 1 is not supported".into()),
        ),
        (
            "error-malformed-command",
            ApiError::MalformedCommand("expected value".into()),
        ),
        (
            "error-rejected",
            ApiError::Rejected("insufficient funds".into()),
        ),
        (
            "error-conflict",
            ApiError::Conflict {
                expected: 3,
                actual: 4,
            },
        ),
        ("error-timeout", ApiError::Timeout { ms: 5000 }),
        ("error-mailbox-full", ApiError::MailboxFull),
        (
            "error-stopped",
            ApiError::Stopped {
                reason: "5 restarts within 60s".into(),
            },
        ),
        (
            "error-guest-fault",
            ApiError::GuestFault {
                kind: GuestFaultKind::Deadline,
                message: "1s".into(),
            },
        ),
        ("error-storage", ApiError::Storage("disk full".into())),
        ("error-shutting-down", ApiError::ShuttingDown),
        (
            "error-deploy-refused",
            ApiError::DeployRefused("not a component".into()),
        ),
        (
            "error-validation-failed",
            ApiError::ValidationFailed(Box::new(report())),
        ),
        (
            "error-not-owner",
            ApiError::NotOwner {
                owner: "10.0.0.2:7400".into(),
            },
        ),
        (
            "error-unavailable",
            ApiError::Unavailable("shard moving".into()),
        ),
        (
            "error-indeterminate",
            ApiError::Indeterminate("replica 2: no answer within 5s".into()),
        ),
    ]
}

/// Checks (or with `CAIRN_BLESS_FIXTURES=1` writes) the fixture of each
/// message; returns the names checked.
fn check<T>(fixtures: Vec<(&'static str, T)>) -> Vec<String>
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bless = std::env::var_os("CAIRN_BLESS_FIXTURES").is_some_and(|v| v == "1");
    let mut names = Vec::new();
    for (name, value) in fixtures {
        let path = dir().join(format!("{name}.bin"));
        let encoded = encode(&value).unwrap();
        if bless {
            std::fs::create_dir_all(dir()).unwrap();
            std::fs::write(&path, &encoded).unwrap();
        }
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (a new fixture: CAIRN_BLESS_FIXTURES=1 writes it)",
                path.display()
            )
        });
        let header: [u8; HEADER_LEN] = bytes[..HEADER_LEN].try_into().unwrap();
        let len = body_len(header, MAX_FRAME).unwrap();
        assert_eq!(len, bytes.len() - HEADER_LEN, "{name}: header length");
        let decoded: T = decode(&bytes[HEADER_LEN..])
            .unwrap_or_else(|e| panic!("{name}: the committed frame no longer decodes: {e}"));
        assert_eq!(decoded, value, "{name}: decodes to another value");
        assert_eq!(encoded, bytes, "{name}: the value encodes to other bytes");
        names.push(format!("{name}.bin"));
    }
    names
}

#[test]
fn committed_frames_decode_and_encode_unchanged() {
    let mut names = check(requests());
    names.extend(check(responses()));
    // Every committed file is checked (none is forgotten by this test).
    let mut on_disk: Vec<String> = std::fs::read_dir(dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".bin"))
        .collect();
    on_disk.sort();
    names.sort();
    assert_eq!(on_disk, names, "fixture files and messages differ");
}

#[test]
fn a_version_1_hello_still_decodes() {
    // What a version-1 client sends first: `Hello` stays variant 0, so a node
    // can tell it which version it speaks.
    let frame = [2, 0, 0, 0, 0, 1];
    let header: [u8; HEADER_LEN] = frame[..HEADER_LEN].try_into().unwrap();
    assert_eq!(body_len(header, MAX_FRAME).unwrap(), 2);
    assert_eq!(
        decode::<Request>(&frame[HEADER_LEN..]).unwrap(),
        Request::Hello { version: 1 }
    );
    assert_ne!(PROTOCOL_VERSION, 1);
    // And the answer keeps `Error` and `BadRequest` where version 1 had them
    // (variants 13 and 2), so a version-1 client can read it.
    let answer = encode(&Response::Error(ApiError::BadRequest("v".into()))).unwrap();
    assert_eq!(&answer[HEADER_LEN..HEADER_LEN + 2], &[13, 2]);
}

#[test]
fn version_4_appends_the_unknown_outcome_after_every_older_error() {
    // Protocol 4 added `Indeterminate` as the last variant (16): every
    // error of version 3 keeps its position and bytes (checked above), and
    // a version-3 client is refused at `Hello` before it could meet one
    // (the version is checked in `version_5_changed_the_cluster_status_only`).
    let answer = encode(&Response::Error(ApiError::Indeterminate("x".into()))).unwrap();
    assert_eq!(&answer[HEADER_LEN..HEADER_LEN + 2], &[13, 16]);
    let hello = encode(&Request::Hello { version: 3 }).unwrap();
    assert_eq!(
        decode::<Request>(&hello[HEADER_LEN..]).unwrap(),
        Request::Hello { version: 3 }
    );
}

#[test]
fn version_5_changed_the_cluster_status_only() {
    // Protocol 5 added `MemberStatus::unready` (the layout of the cluster
    // status changed: a version-4 client could not read it, so the version
    // moved); every other message keeps its bytes (checked above).
    assert_eq!(PROTOCOL_VERSION, 5);
}

#[test]
fn deploy_progress_is_appended_without_a_version_bump() {
    // `DeployProgress` came after protocol 4 as the last request (15) and
    // the last response (16): every older message keeps its bytes (checked
    // above). The version stayed 4: a client asks for progress only as an
    // extra, and an older node answers the request it cannot decode with
    // an error the client ignores.
    let ask = encode(&Request::DeployProgress { entity_type: ty() }).unwrap();
    assert_eq!(ask[HEADER_LEN], 15);
    let answer = encode(&Response::DeployProgress {
        phase: None,
        done: 0,
        total: 0,
        elapsed_ms: 0,
    })
    .unwrap();
    assert_eq!(answer[HEADER_LEN], 16);
}
