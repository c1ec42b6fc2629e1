//! Output shared by the commands: progress spinners, times, and events as
//! text or JSON (`--json`: one object per line).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::EventView;
use indicatif::ProgressBar;

/// A spinner on stderr with a message, until `finish_and_clear`.
pub fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_message(msg.to_owned());
    pb.enable_steady_tick(Duration::from_millis(100));
    pb
}

/// A time (ms since the Unix epoch) as RFC 3339 with milliseconds.
pub fn fmt_time(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Prints one event: sequence, time, behavior version, the event as JSON
/// (with the entity id if `with_id`).
pub fn print_event(e: &EventView, json: bool, with_id: bool) {
    let body = e
        .json
        .clone()
        .unwrap_or_else(|| format!("\"<{} bytes the behavior cannot render>\"", e.bytes.len()));
    if json {
        println!(
            "{{\"entity_type\":{},\"entity_id\":{},\"seq\":{},\"timestamp_ms\":{},\"behavior_version\":{},\"event\":{body}}}",
            serde_json::Value::from(e.entity_type.as_str()),
            serde_json::Value::from(e.entity_id.as_str()),
            e.seq,
            e.timestamp_ms,
            serde_json::Value::from(e.behavior_version.as_str()),
        );
    } else if with_id {
        println!(
            "{}  #{:<5} {}  v{}  {body}",
            e.entity_id,
            e.seq,
            fmt_time(e.timestamp_ms),
            e.behavior_version
        );
    } else {
        println!(
            "#{:<5} {}  v{}  {body}",
            e.seq,
            fmt_time(e.timestamp_ms),
            e.behavior_version
        );
    }
}

/// The `p` quantile (0 to 1) of sorted durations; zero if there are none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}
