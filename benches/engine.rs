//! Hot paths of a journey job: decoding a source record, and the session operator's
//! on_event / on_watermark, on records from the synthetic workload. Throughput in events.

use std::hint::black_box;
use std::time::Duration;

use braid::datagen::{GenConfig, JOURNEY_TOPICS, RecordClass};
use braid::decode::{DecoderConfig, Event};
use braid::engine::{Checkpointed, Operator, SessionConfig, SessionOperator};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const EVENTS: u64 = 100_000;

/// Well-formed journey records in arrival order, with their source index.
fn records() -> Vec<(u16, Vec<u8>)> {
    let generator = GenConfig {
        events: EVENTS,
        customers: 10_000,
        fulfilment: false,
        poison_fraction: 0.0,
        ..GenConfig::default()
    }
    .build()
    .unwrap();
    generator
        .filter(|r| !matches!(r.class, RecordClass::Poison(_)))
        .map(|r| {
            let source = JOURNEY_TOPICS.iter().position(|t| *t == r.topic).unwrap() as u16;
            (source, r.value)
        })
        .collect()
}

fn decoders() -> Vec<braid::decode::Decoder> {
    JOURNEY_TOPICS
        .iter()
        .enumerate()
        .map(|(i, t)| {
            DecoderConfig {
                topic: t.to_string(),
                source_index: i as u16,
                key: "/customer_id".into(),
                time: "/ts".into(),
                id: Some("/event_id".into()),
                max_record_bytes: 1 << 20,
            }
            .build()
        })
        .collect()
}

fn decode(c: &mut Criterion) {
    let records = records();
    let decoders = decoders();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.sample_size(20);
    group.bench_function("journey_records", |b| {
        b.iter(|| {
            for (i, (source, value)) in records.iter().enumerate() {
                let _ = black_box(decoders[*source as usize].decode(0, i as u64, value));
            }
        })
    });
    group.finish();
}

fn session(c: &mut Criterion) {
    let decoders = decoders();
    let events: Vec<Event> = records()
        .iter()
        .enumerate()
        .filter_map(|(i, (s, v))| decoders[*s as usize].decode(0, i as u64, v).ok())
        .collect();
    let config = SessionConfig {
        topology: "bench".into(),
        sources: JOURNEY_TOPICS.iter().map(|t| t.to_string()).collect(),
        gap: Duration::from_secs(30 * 60),
        grace: Duration::ZERO,
        retention: None,
        max_duration: None,
        include_payload: true,
        max_events: None,
    };
    let mut group = c.benchmark_group("session_operator");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.sample_size(20);
    group.bench_function("on_event_and_watermark", |b| {
        b.iter_batched(
            || (config.clone().build().unwrap(), events.clone()),
            |(mut op, events)| black_box(feed(&mut op, events, None)),
            BatchSize::LargeInput,
        )
    });
    // The same, written behind as a job does: every 4096 events a checkpoint drains the
    // changed keys into their heads and chunks (packed), the hot path of state encoding.
    group.bench_function("with_checkpoints_every_4096_events", |b| {
        b.iter_batched(
            || (config.clone().build().unwrap(), events.clone()),
            |(mut op, events)| black_box(feed(&mut op, events, Some(4096))),
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// Feeds `events` with a watermark 5 s behind the largest time every 1024 events, and
/// drains the changes every `checkpoint_every` events; returns the outputs of the last
/// watermark and the chunk bytes written.
fn feed(
    op: &mut SessionOperator,
    events: Vec<Event>,
    checkpoint_every: Option<usize>,
) -> (usize, usize) {
    let mut out = Vec::new();
    let mut scratch = Vec::new();
    let mut bytes = 0;
    let mut max = i64::MIN;
    for (i, e) in events.into_iter().enumerate() {
        max = max.max(e.time);
        op.on_event(e, max - 5_000, &mut out);
        if i % 1024 == 0 {
            op.on_watermark(max - 5_000, &mut out);
            out.clear();
        }
        if checkpoint_every.is_some_and(|n| i % n == n - 1) {
            let w = op.drain_writes(i as u64, &mut scratch).unwrap();
            bytes += w.chunks.iter().map(|c| c.2.len()).sum::<usize>();
        }
    }
    op.on_watermark(i64::MAX, &mut out);
    (out.len(), bytes)
}

criterion_group!(benches, decode, session);
criterion_main!(benches);
