//! Embedded log throughput: batched append (with and without per-batch fsync) and sequential
//! read of ~300-byte JSON records. Throughput is in records; bytes/s = records/s × the record
//! size printed at start.

use std::hint::black_box;

use braid::log::{FsyncPolicy, Log, WriterOptions};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};

const BATCH: usize = 1000;
const READ_RECORDS: u64 = 100_000;

fn record(i: usize) -> (Vec<u8>, Vec<u8>) {
    let key = format!("c-{:06}", i % 200_000);
    let value = format!(
        r#"{{"event_id":"pv-{i:09}","customer_id":"{key}","ts":"2026-01-05T08:{:02}:{:02}.{:03}+01:00","page":"/products/{:05}","referrer":"https://search.example.com/?q=item-{:05}","session_hint":"s-{:07}","agent":"Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"}}"#,
        (i / 60) % 60,
        i % 60,
        i % 1000,
        i % 50_000,
        i % 40_000,
        i / 7
    );
    (key.into_bytes(), value.into_bytes())
}

fn batch() -> Vec<(Vec<u8>, Vec<u8>)> {
    (0..BATCH).map(record).collect()
}

fn append(c: &mut Criterion) {
    let records = batch();
    eprintln!("record size: {} bytes of value", records[0].1.len());
    let mut group = c.benchmark_group("log_append");
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, fsync) in [
        ("no_fsync", FsyncPolicy::Never),
        ("fsync_per_batch", FsyncPolicy::EveryBatch),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path()).unwrap();
        log.create_topic("bench", 1).unwrap();
        let opts = WriterOptions {
            fsync,
            ..WriterOptions::default()
        };
        let mut writer = log.writer("bench", 0, opts).unwrap();
        group.bench_function(format!("batch_{BATCH}_{name}"), |b| {
            b.iter(|| {
                writer
                    .append(
                        records
                            .iter()
                            .map(|(k, v)| (Some(k.as_slice()), v.as_slice())),
                    )
                    .unwrap()
            })
        });
    }
    group.finish();
}

fn read(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path()).unwrap();
    log.create_topic("bench", 1).unwrap();
    let opts = WriterOptions {
        fsync: FsyncPolicy::Never,
        ..WriterOptions::default()
    };
    let mut writer = log.writer("bench", 0, opts).unwrap();
    let records = batch();
    for _ in 0..READ_RECORDS / BATCH as u64 {
        writer
            .append(
                records
                    .iter()
                    .map(|(k, v)| (Some(k.as_slice()), v.as_slice())),
            )
            .unwrap();
    }
    drop(writer);
    let mut group = c.benchmark_group("log_read");
    group.throughput(Throughput::Elements(READ_RECORDS));
    group.sample_size(20);
    group.bench_function("sequential_borrowed", |b| {
        b.iter_batched(
            || log.reader("bench", 0, 0).unwrap(),
            |mut reader| {
                let mut bytes = 0usize;
                while reader
                    .read_into(4096, |view, _| bytes += view.value.len())
                    .unwrap()
                    > 0
                {}
                black_box(bytes)
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function("sequential_owned", |b| {
        b.iter_batched(
            || log.reader("bench", 0, 0).unwrap(),
            |mut reader| {
                let mut n = 0usize;
                loop {
                    let batch = reader.read_batch(4096).unwrap();
                    if batch.is_empty() {
                        break;
                    }
                    n += batch.len();
                }
                black_box(n)
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group!(benches, append, read);
criterion_main!(benches);
