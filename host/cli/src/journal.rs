//! `cairn journal check` and `cairn journal cut`: offline inspection and
//! repair of a data directory's event log (`events.log`), for the operator
//! of a stopped node. Owns only the wording; the scan, the lock, the backup
//! and the cut are `cairn_store::check_log` and `cairn_store::cut_log`.
//! It never cuts without `--at` naming the damage that `check` reported,
//! and never without a backup copy made first.

use std::path::Path;

use anyhow::{Context, Result, bail};
use cairn_store::{LogReport, check_log, cut_log};

/// Reports the log of `dir`; fails (exit status 1) when acknowledged data
/// is damaged, so that scripts notice.
pub fn check(dir: &Path) -> Result<()> {
    let r =
        check_log(dir).with_context(|| format!("cannot check the journal in {}", dir.display()))?;
    print_report(&r);
    if let Some(d) = &r.damage {
        bail!(
            "{} is damaged at byte {}: the node will not start. To cut it (after a backup copy):\n  cairn journal cut --data-dir {} --at {}",
            r.path.display(),
            d.offset,
            dir.display(),
            d.offset
        );
    }
    Ok(())
}

fn print_report(r: &LogReport) {
    println!("{}: format {}", r.path.display(), r.format);
    println!(
        "good records: {} (up to byte {} of {}), entities with events: {}",
        r.records, r.data_end, r.file_len, r.entities
    );
    match r.uncovered_from {
        None => println!("ends with a marker: damage anywhere in the data is detected"),
        Some(at) => println!(
            "not closed cleanly: the last group (bytes {at}..{}) has no marker after it; damage there would read as a torn tail",
            r.data_end
        ),
    }
    if let Some(n) = r.torn_tail {
        println!(
            "torn tail: {n} bytes past byte {} were never acknowledged; the node cuts them when it opens the log",
            r.data_end
        );
    }
    match &r.damage {
        None => println!("no damage to acknowledged data"),
        Some(d) => println!("DAMAGED: {d}"),
    }
}

/// Cuts the log of `dir` at byte `at`, where `check` reported damage: a
/// backup copy first, then the truncation; prints what was lost.
pub fn cut(dir: &Path, at: u64) -> Result<()> {
    let c =
        cut_log(dir, at).with_context(|| format!("cannot cut the journal in {}", dir.display()))?;
    println!(
        "backup: {} (the whole file, {} bytes)",
        c.backup.display(),
        c.old_len
    );
    let d = &c.damage;
    println!(
        "cut {} at byte {} ({} bytes of records dropped); the node can start",
        d.path.display(),
        c.cut_at,
        d.data_end.saturating_sub(c.cut_at)
    );
    match &d.in_record {
        Some(a) if !a.is_empty() => {
            for x in a {
                println!("lost (the damaged record, read despite the damage): {x}");
            }
        }
        Some(_) => println!("lost: the damaged record was a batch marker (no data)"),
        None => println!("lost: the damaged record, unreadable (its entities are unknown)"),
    }
    if d.resumed_at.is_none() && d.data_end > d.offset {
        println!(
            "lost: bytes {}..{} after it, unreadable",
            d.offset, d.data_end
        );
    }
    for x in &d.after {
        println!("lost (a later record): {x}");
    }
    Ok(())
}
