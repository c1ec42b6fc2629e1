//! `cairn bench`: drives a running node with commands (bank-account
//! deposits by default) and prints throughput and latency: many concurrent
//! streams, one sequential client, and the network round trip alone. With
//! `--probe-disk` it also measures the disk's sync latency ([`crate::probe`]).

use std::time::{Duration, Instant};

use anyhow::Result;
use cairn_proto::{Payload, Request};
use indicatif::{ProgressBar, ProgressStyle};

use crate::args::BenchArgs;
use crate::output::percentile;
use crate::probe::DiskProbes;

/// Runs the benchmark against a running node.
pub async fn run(a: BenchArgs) -> Result<()> {
    let client = a.conn.connect().await?;
    let command = client.encode_command(&a.entity_type, &a.command).await?;

    // The network alone: a request the node answers without the journal.
    let mut rtt = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        client
            .call(&Request::Hello {
                version: cairn_proto::PROTOCOL_VERSION,
            })
            .await?;
        rtt.push(t.elapsed());
    }
    rtt.sort();

    // One sequential client: 20 blocks of 100 commands, with --probe-disk
    // each after a block of 10 rounds of the disk probes.
    let mut probes = match a.probe_disk {
        true => Some(DiskProbes::open(&a.fsync_dir, 200)?),
        false => None,
    };
    let mut seq = Vec::with_capacity(2000);
    for _ in 0..20 {
        if let Some(p) = probes.as_mut() {
            for _ in 0..10 {
                p.round()?;
            }
        }
        for i in 0..100 {
            let id = format!("bench-seq-{i}");
            let t = Instant::now();
            client
                .ask(
                    &a.entity_type,
                    &id,
                    Payload::Bytes(command.clone()),
                    None,
                    None,
                )
                .await?;
            seq.push(t.elapsed());
        }
    }
    seq.sort();

    let pb = ProgressBar::new(a.commands as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} commands  {per_sec}  eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let per_stream = a.commands / a.streams.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..a.streams {
        let client = client.clone();
        let command = command.clone();
        let ty = a.entity_type.clone();
        let pb = pb.clone();
        let entities = a.entities.max(1);
        let streams = a.streams;
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per_stream);
            let mut failed = 0u64;
            let mut e = s;
            for i in 1..=per_stream {
                let id = format!("bench-{}", e % entities);
                e += streams;
                let t = Instant::now();
                match client
                    .ask(&ty, &id, Payload::Bytes(command.clone()), None, None)
                    .await
                {
                    Ok(_) => lat.push(t.elapsed()),
                    Err(_) => failed += 1,
                }
                if i % 256 == 0 {
                    pb.inc(256);
                } else if i == per_stream {
                    pb.inc((i % 256) as u64);
                }
            }
            (lat, failed)
        }));
    }
    let mut lat = Vec::with_capacity(a.commands);
    let mut failed = 0;
    for t in tasks {
        let (l, f) = t.await?;
        lat.extend(l);
        failed += f;
    }
    let elapsed = start.elapsed();
    pb.finish_and_clear();
    lat.sort();
    let us = |d: Duration| d.as_micros();
    println!(
        "cairn bench: {} commands over {} streams on {} entities of {}, node {}",
        lat.len() + failed as usize,
        a.streams,
        a.entities,
        a.entity_type,
        a.conn.node
    );
    println!(
        "throughput   {:.0} commands/s ({} failed, {:.1} s)",
        lat.len() as f64 / elapsed.as_secs_f64(),
        failed,
        elapsed.as_secs_f64()
    );
    println!(
        "latency      p50 {} µs   p99 {} µs   p99.9 {} µs",
        us(percentile(&lat, 0.5)),
        us(percentile(&lat, 0.99)),
        us(percentile(&lat, 0.999))
    );
    println!(
        "sequential   p50 {} µs   p99 {} µs   (one client, one command at a time)",
        us(percentile(&seq, 0.5)),
        us(percentile(&seq, 0.99))
    );
    if let Some(p) = probes {
        print_probes(p, &a, percentile(&seq, 0.5));
    }
    println!(
        "round trip   p50 {} µs   p99 {} µs   (a request the node answers without the journal)",
        us(percentile(&rtt, 0.5)),
        us(percentile(&rtt, 0.99))
    );
    client.close().await;
    Ok(())
}

/// Prints the disk probes' latencies next to the sequential client's p50.
fn print_probes(mut probes: DiskProbes, a: &BenchArgs, seq_p50: Duration) {
    let us = |d: Duration| d.as_micros() as i128;
    let log_how = probes.log.how();
    let mut fsync_lat = std::mem::take(&mut probes.append_lat);
    let mut log_lat = std::mem::take(&mut probes.log_lat);
    drop(probes);
    fsync_lat.sort();
    log_lat.sort();
    let (fsync_p50, fsync_p99) = (percentile(&fsync_lat, 0.5), percentile(&fsync_lat, 0.99));
    let (log_p50, log_p99) = (percentile(&log_lat, 0.5), percentile(&log_lat, 0.99));
    println!(
        "fsync        p50 {} µs   p99 {} µs   (64-byte append + fdatasync in {}, between the sequential blocks); sequential p50 - fsync p50 = {} µs",
        us(fsync_p50),
        us(fsync_p99),
        a.fsync_dir.display(),
        us(seq_p50) - us(fsync_p50)
    );
    println!(
        "log sync     p50 {} µs   p99 {} µs   ({log_how} in preallocated space: the log journal's sync); sequential p50 - log sync p50 = {} µs",
        us(log_p50),
        us(log_p99),
        us(seq_p50) - us(log_p50)
    );
}
