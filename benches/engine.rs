//! Hot paths of a journey job, on records from the synthetic workload: decoding a source
//! record, the watermark update, the session operator's on_event / on_watermark, the
//! state's packing of stored values, the key cache's lookup, and the outbox placing and
//! publishing output.
//! Throughput in events (or records).

use std::hint::black_box;
use std::time::Duration;

use braid::datagen::{GenConfig, JOURNEY_TOPICS, RecordClass};
use braid::decode::{DecoderConfig, Event};
use braid::engine::cache::{CacheState, KeyCache, Lookup};
use braid::engine::{Checkpointed, Operator, Output, SessionConfig, SessionOperator};
use braid::log::Log;
use braid::outbox::{OutKind, OutRecord, Outbox, SequenceCounters};
use braid::sink::Sink;
use braid::source::Backend;
use braid::state::{Checkpoint, StateOptions, StateStore, pack, unpack};
use braid::time::{PartitionId, WatermarkConfig, Watermarks};
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

fn session_config() -> SessionConfig {
    SessionConfig::with_gap("bench", &JOURNEY_TOPICS, Duration::from_secs(30 * 60))
}

fn session(c: &mut Criterion) {
    let events = decoded();
    let config = session_config();
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

/// The journeys of the workload, rendered (what the outbox and the state pack carry).
fn journeys(events: &[Event]) -> Vec<(String, Vec<u8>)> {
    let mut op = session_config().build().unwrap();
    let mut out = Vec::new();
    for e in events.iter().cloned() {
        op.on_event(e, i64::MIN, &mut out);
    }
    op.on_watermark(i64::MAX, &mut out);
    out.into_iter()
        .filter_map(|o| match o {
            Output::Journey(j) => Some((j.key.to_string(), j.to_json())),
            _ => None,
        })
        .collect()
}

fn decoded() -> Vec<Event> {
    let decoders = decoders();
    records()
        .iter()
        .enumerate()
        .filter_map(|(i, (s, v))| decoders[*s as usize].decode(0, i as u64, v).ok())
        .collect()
}

/// Every event observed by its partition's watermark (3 sources × 4 partitions), and
/// the job watermark advanced every 1024 events, as the source stage does.
fn watermark(c: &mut Criterion) {
    let events = decoded();
    let ids: Vec<PartitionId> = (0..3u16)
        .flat_map(|source| (0..4u32).map(move |partition| PartitionId { source, partition }))
        .collect();
    let config = WatermarkConfig {
        out_of_orderness: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(30),
    };
    let mut group = c.benchmark_group("watermark");
    group.throughput(Throughput::Elements(events.len() as u64));
    group.bench_function("observe_and_advance", |b| {
        b.iter(|| {
            let mut w = Watermarks::new(config, ids.iter().copied(), 0);
            let mut moved = 0;
            for (i, e) in events.iter().enumerate() {
                w.observe(ids[i % ids.len()], e.time, 0);
                if i % 1024 == 1023 {
                    moved += usize::from(w.advance(0).is_some());
                }
            }
            black_box(moved)
        })
    });
    group.finish();
}

/// LZ4 packing of stored values (journeys as the outbox stores them), and back; and of
/// single events.
fn state(c: &mut Criterion) {
    let journeys = journeys(&decoded());
    let bytes: usize = journeys.iter().map(|(_, j)| j.len()).sum();
    let packed: Vec<Vec<u8>> = journeys.iter().map(|(_, j)| pack(j)).collect();
    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("pack_journeys", |b| {
        b.iter(|| {
            for (_, j) in &journeys {
                black_box(pack(j));
            }
        })
    });
    group.bench_function("unpack_journeys", |b| {
        b.iter(|| {
            for p in &packed {
                black_box(unpack(p).unwrap());
            }
        })
    });
    group.finish();
    // Values of one event each, as a one-event chunk or a late report stores it: most
    // fall below `PACK_LITERAL_BELOW` and are stored as literals.
    let events: Vec<Vec<u8>> = records().into_iter().map(|(_, v)| v).collect();
    let bytes: usize = events.iter().map(Vec::len).sum();
    let mut group = c.benchmark_group("state");
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("pack_events", |b| {
        b.iter(|| {
            for e in &events {
                black_box(pack(e));
            }
        })
    });
    group.finish();
}

/// The outbox: placing output records (partition, sequence number, stamp), and one
/// checkpoint's worth of them committed, appended to the embedded log, synced and
/// acknowledged.
fn outbox(c: &mut Criterion) {
    let journeys = journeys(&decoded());
    let dir = tempfile::TempDir::new().unwrap();
    let log = Log::open(dir.path().join("log")).unwrap();
    for topic in ["j", "l", "d"] {
        log.create_topic(topic, 4).unwrap();
    }
    let records = || {
        journeys
            .iter()
            .map(|(k, j)| {
                OutRecord::new(OutKind::Journey, Some(k.as_bytes().to_vec()), j.clone(), 0)
            })
            .collect::<Vec<_>>()
    };
    let mut group = c.benchmark_group("outbox");
    group.throughput(Throughput::Elements(journeys.len() as u64));
    group.sample_size(10);
    group.bench_function("place", |b| {
        let mut placer = Outbox::new(
            "bench",
            Sink::new(&Backend::Embedded(log.clone()), Default::default()),
            ["j", "l", "d"],
            SequenceCounters::new(),
        )
        .unwrap();
        b.iter_batched(
            records,
            |rs| {
                for r in rs {
                    black_box(placer.place(r));
                }
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("commit_and_publish", |b| {
        let store =
            StateStore::open(&dir.path().join("state"), 1, StateOptions::default()).unwrap();
        let mut outbox = Outbox::new(
            "bench",
            Sink::new(&Backend::Embedded(log.clone()), Default::default()),
            ["j", "l", "d"],
            SequenceCounters::new(),
        )
        .unwrap();
        let mut placer = Outbox::new_placer(&outbox);
        b.iter_batched(
            || {
                records()
                    .into_iter()
                    .map(|r| placer.place(r))
                    .collect::<Vec<_>>()
            },
            |entries| {
                store
                    .commit(Checkpoint {
                        outbox: &entries,
                        ..Checkpoint::default()
                    })
                    .unwrap();
                black_box(outbox.publish(&store, &entries).unwrap())
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

/// A cached key's state in the lookup benchmark.
struct Visits(u64);

impl CacheState for Visits {
    fn is_empty(&self) -> bool {
        self.0 == 0
    }
}

/// Finding a cached key among 200,000 (the default dataset's customers, named as the
/// generator names them), in an order unrelated to insertion: what each event pays before
/// its operator sees its key's state.
fn cache(c: &mut Criterion) {
    const KEYS: usize = 200_000;
    let keys: Vec<std::sync::Arc<str>> = (0..KEYS).map(|i| format!("c-{i:06}").into()).collect();
    let mut cache = KeyCache::new();
    for key in &keys {
        cache.insert(key.clone(), Visits(1));
    }
    cache.drain(1, |_, _| {});
    // 7,919 is prime and divides neither 2 nor 5, so this visits every key once.
    let lookups: Vec<String> = (0..KEYS)
        .map(|i| keys[(i * 7_919 + 13) % KEYS].to_string())
        .collect();
    let mut group = c.benchmark_group("key_cache");
    group.throughput(Throughput::Elements(KEYS as u64));
    group.bench_function("get_mut_among_200k_keys", |b| {
        b.iter(|| {
            let mut visits = 0;
            for key in &lookups {
                if let Lookup::Found(entry) = cache.get_mut(key) {
                    visits += entry.state().0;
                }
            }
            black_box(visits)
        })
    });
    group.finish();
}

criterion_group!(benches, decode, watermark, session, state, cache, outbox);
criterion_main!(benches);
