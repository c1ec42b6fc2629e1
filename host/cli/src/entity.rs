//! `cairn ask`, `tell`, `events`, `state` and `tail`: commands to an entity
//! and reads of its history.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::{Result, anyhow, bail};
use cairn_client::ClientError;
use cairn_proto::{Payload, Response, Retry, StateAt};

use crate::args::ConnArgs;
use crate::output::{fmt_time, now_ms, print_event, spinner};

/// Sends a command and prints the reply.
pub async fn ask(
    entity_type: &str,
    entity_id: &str,
    command: String,
    expect_seq: Option<u64>,
    timeout: Option<Duration>,
    conn: &ConnArgs,
) -> Result<()> {
    let client = conn.connect().await?;
    let r = client
        .ask(
            entity_type,
            entity_id,
            Payload::Json(command),
            expect_seq,
            timeout,
        )
        .await
        .map_err(|e| with_advice(e, entity_type, entity_id, true))?;
    let reply = match r.reply {
        Some(Payload::Json(j)) => j,
        Some(_) => bail!("the node answered bytes to a JSON command"),
        None => "null".into(),
    };
    if conn.json {
        println!("{{\"reply\":{reply},\"seq\":{}}}", r.seq);
    } else {
        println!("{reply}");
        eprintln!("(seq {})", r.seq);
    }
    client.close().await;
    Ok(())
}

/// Queues a command.
pub async fn tell(
    entity_type: &str,
    entity_id: &str,
    command: String,
    conn: &ConnArgs,
) -> Result<()> {
    let client = conn.connect().await?;
    client
        .tell(entity_type, entity_id, Payload::Json(command))
        .await
        .map_err(|e| with_advice(e, entity_type, entity_id, false))?;
    if conn.json {
        println!("{{\"queued\":true}}");
    } else {
        println!("queued");
    }
    client.close().await;
    Ok(())
}

/// A failed command's error with what to do about it: whether the command
/// may have been applied (the outcome is unknown) or certainly was not.
fn with_advice(e: ClientError, entity_type: &str, entity_id: &str, ask: bool) -> anyhow::Error {
    let advice = match e.retry() {
        Retry::WithExpectedSeq => {
            let resend = if ask {
                "; send it again only with --expect-seq"
            } else {
                ""
            };
            format!(
                "the command may or may not have been applied: check `cairn events {entity_type} {entity_id}` before sending it again{resend}"
            )
        }
        Retry::Later => "the command was not applied; it is safe to send it again".into(),
        Retry::OnOwner(owner) => format!("the command was not applied; send it to {owner}"),
        _ => return e.into(),
    };
    anyhow!("{e}\n  {advice}")
}

/// Prints an entity's events with `from <= seq <= to`, at most `limit`.
pub async fn events(
    entity_type: &str,
    entity_id: &str,
    from: u64,
    to: Option<u64>,
    limit: u32,
    conn: &ConnArgs,
) -> Result<()> {
    let client = conn.connect().await?;
    let events = client
        .events(entity_type, entity_id, from, to.unwrap_or(u64::MAX), limit)
        .await?;
    for e in &events {
        print_event(e, conn.json, false);
    }
    if events.is_empty() && !conn.json {
        eprintln!("no events");
    }
    client.close().await;
    Ok(())
}

/// Prints an entity's state: now, after event `at_seq`, or at time `at`.
pub async fn state(
    entity_type: &str,
    entity_id: &str,
    at_seq: Option<u64>,
    at: Option<String>,
    conn: &ConnArgs,
) -> Result<()> {
    let at = match (at_seq, at) {
        (Some(n), _) => StateAt::Seq(n),
        (None, Some(t)) => StateAt::Time(parse_time(&t)?),
        (None, None) => StateAt::Now,
    };
    let client = conn.connect().await?;
    let spinner = (!matches!(at, StateAt::Now)).then(|| spinner("replaying history"));
    let s = client.state(entity_type, entity_id, at).await;
    if let Some(sp) = spinner {
        sp.finish_and_clear();
    }
    let s = s?;
    if conn.json {
        println!(
            "{{\"state\":{},\"seq\":{},\"replayed\":{}}}",
            s.json, s.seq, s.replayed
        );
    } else {
        println!("{}", s.json);
        if matches!(at, StateAt::Now) {
            eprintln!("(seq {})", s.seq);
        } else {
            eprintln!("(seq {}, {} events replayed)", s.seq, s.replayed);
        }
    }
    client.close().await;
    Ok(())
}

/// A time given as ms since the epoch or RFC 3339.
fn parse_time(s: &str) -> Result<u64> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let t = humantime::parse_rfc3339_weak(s).map_err(|e| {
        anyhow!(
            "`{s}` is not a time: use RFC 3339 (2026-11-22T10:00:00Z) or ms since the epoch ({e})"
        )
    })?;
    Ok(t.duration_since(UNIX_EPOCH)?.as_millis() as u64)
}

/// Follows lifecycle events, or every new event of a type.
pub async fn tail(
    entity_type: Option<String>,
    from: Option<u64>,
    count: Option<u64>,
    conn: &ConnArgs,
) -> Result<()> {
    let client = conn.connect().await?;
    let mut seen = 0u64;
    let limit = count.unwrap_or(u64::MAX);
    match entity_type {
        None => {
            let mut follow = client.follow_lifecycle().await?;
            eprintln!("(following lifecycle events)");
            while seen < limit {
                let Some(r) = follow.next().await else { break };
                match r? {
                    Response::Lifecycle {
                        kind,
                        entity_type,
                        entity_id,
                        detail,
                    } => {
                        if conn.json {
                            println!(
                                "{}",
                                serde_json::json!({
                                    "kind": kind, "entity_type": entity_type,
                                    "entity_id": entity_id, "detail": detail,
                                })
                            );
                        } else {
                            println!(
                                "{} {kind:<12} {entity_type}{} {detail}",
                                fmt_time(now_ms()),
                                entity_id.map(|i| format!("/{i}")).unwrap_or_default()
                            );
                        }
                        seen += 1;
                    }
                    Response::Lagged(n) => eprintln!("(missed {n} lifecycle events)"),
                    other => bail!("unexpected response {other:?}"),
                }
            }
        }
        Some(ty) => {
            let cursor = match from {
                Some(c) => c,
                None => {
                    // Only new events: skip to the end of the feed first.
                    let mut f = client.follow_events(&ty, 0).await?;
                    let mut end = 0;
                    loop {
                        let next = tokio::time::timeout(Duration::from_millis(300), f.next()).await;
                        match next {
                            Ok(Some(Ok(Response::Feed { next, .. }))) => end = next,
                            Ok(Some(Err(e))) => return Err(e.into()),
                            _ => break,
                        }
                    }
                    f.stop();
                    end
                }
            };
            let mut follow = client.follow_events(&ty, cursor).await?;
            eprintln!("(following {ty} events from cursor {cursor})");
            'outer: while seen < limit {
                let Some(r) = follow.next().await else { break };
                match r? {
                    Response::Feed { events, next } => {
                        for e in &events {
                            print_event(e, conn.json, true);
                            seen += 1;
                            if seen >= limit {
                                break 'outer;
                            }
                        }
                        if !conn.json {
                            eprintln!("(cursor {next})");
                        }
                    }
                    other => bail!("unexpected response {other:?}"),
                }
            }
        }
    }
    client.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_proto::ApiError;

    #[test]
    fn a_failed_command_says_whether_it_may_have_been_applied() {
        let unknown = with_advice(
            ClientError::Api(ApiError::Indeterminate("replica 2 did not answer".into())),
            "bank-account",
            "acct-1",
            true,
        )
        .to_string();
        assert!(unknown.starts_with("outcome unknown"), "{unknown}");
        assert!(
            unknown.contains("may or may not have been applied")
                && unknown.contains("cairn events bank-account acct-1")
                && unknown.contains("--expect-seq"),
            "{unknown}"
        );
        let refused = with_advice(
            ClientError::Api(ApiError::Storage("min_acks is 2".into())),
            "bank-account",
            "acct-1",
            false,
        )
        .to_string();
        assert!(refused.contains("was not applied; it is safe"), "{refused}");
        let never = with_advice(
            ClientError::Api(ApiError::Rejected("insufficient funds".into())),
            "bank-account",
            "acct-1",
            true,
        )
        .to_string();
        assert_eq!(never, "rejected: insufficient funds");
    }
}
