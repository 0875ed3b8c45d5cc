//! The embedded log on real files: framing, rolling, indexes, crash recovery, locking and
//! tail following.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use braid::log::{FsyncPolicy, WriterOptions, partition_for_key};
use common::{TempLog, run_with_stdin};

fn small_segments() -> WriterOptions {
    WriterOptions {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        fsync: FsyncPolicy::Never,
    }
}

/// A ~300-byte JSON record whose content identifies `i`.
fn value(i: u64) -> Vec<u8> {
    format!(
        r#"{{"event_id":"pv-{i}","customer_id":"c-{:06}","ts":{},"page":"/products/{}","referrer":"https://example.com/search?q=item-{i}","agent":"Mozilla/5.0 (X11; Linux x86_64) braid-test","padding":"{}"}}"#,
        i % 97,
        1_767_600_000_000 + i as i64 * 1000,
        i * 7,
        "x".repeat((i % 50) as usize)
    )
    .into_bytes()
}

fn key(i: u64) -> Option<Vec<u8>> {
    (!i.is_multiple_of(3)).then(|| format!("c-{:06}", i % 97).into_bytes())
}

fn fill(t: &TempLog, topic: &str, n: u64, batch: u64, opts: WriterOptions) {
    t.log.create_topic(topic, 1).unwrap();
    let mut w = t.log.writer(topic, 0, opts).unwrap();
    let mut i = 0;
    while i < n {
        let end = (i + batch).min(n);
        let recs: Vec<(Option<Vec<u8>>, Vec<u8>)> = (i..end).map(|j| (key(j), value(j))).collect();
        let got = w
            .append_at(
                recs.iter().map(|(k, v)| (k.as_deref(), v.as_slice())),
                1_000 * (i as i64 / batch as i64 + 1),
            )
            .unwrap();
        assert_eq!(got, i..end);
        i = end;
    }
}

#[test]
fn append_and_read_back_across_segment_rolls() {
    let t = TempLog::new();
    fill(&t, "t", 1000, 37, small_segments());
    let info = t.log.partition_info("t", 0).unwrap();
    assert_eq!((info.start_offset, info.end_offset), (0, 1000));
    assert!(
        info.segments > 20,
        "expected many segments, got {}",
        info.segments
    );
    let mut r = t.log.reader("t", 0, 0).unwrap();
    let mut all = Vec::new();
    loop {
        let batch = r.read_batch(64).unwrap();
        if batch.is_empty() {
            break;
        }
        all.extend(batch);
    }
    assert_eq!(all.len(), 1000);
    for (i, rec) in all.iter().enumerate() {
        let i = i as u64;
        assert_eq!(rec.offset, i);
        assert_eq!(rec.key, key(i));
        assert_eq!(rec.value, value(i));
        assert_eq!(rec.timestamp_ms, 1_000 * (i as i64 / 37 + 1));
    }
}

#[test]
fn a_value_that_fails_to_write_itself_ends_the_batch_after_the_records_before_it() {
    let t = TempLog::new();
    t.log.create_topic("t", 1).unwrap();
    let mut w = t.log.writer("t", 0, small_segments()).unwrap();
    let values: Vec<Vec<u8>> = (0..100).map(value).collect();
    // Record 60 fails halfway through writing its value, over several segment rolls.
    let appended = w
        .append_with(values.iter().enumerate().map(|(i, v)| {
            let write = move |out: &mut Vec<u8>| {
                if i == 60 {
                    out.extend_from_slice(&v[..10]);
                    return Err(format!("value {i} is corrupt"));
                }
                out.extend_from_slice(v);
                Ok(())
            };
            (key(i as u64).map(|_| &b"k"[..]), 7_000, write)
        }))
        .unwrap();
    assert_eq!(appended, Err("value 60 is corrupt".to_owned()));
    assert_eq!(w.next_offset(), 60);
    // The writer goes on from there, and a reopened writer agrees.
    let more = w.append_at([(None, &value(60)[..])], 8_000).unwrap();
    assert_eq!(more, 60..61);
    drop(w);
    assert_eq!(
        t.log
            .writer("t", 0, small_segments())
            .unwrap()
            .next_offset(),
        61
    );
    let info = t.log.partition_info("t", 0).unwrap();
    assert!(
        info.segments > 3,
        "expected rolls, got {} segments",
        info.segments
    );
    // Every record reads back whole, from the start and through the index.
    let mut r = t.log.reader("t", 0, 0).unwrap();
    let all = r.read_batch(1000).unwrap();
    assert_eq!(all.len(), 61);
    for (i, rec) in all.iter().enumerate() {
        assert_eq!(rec.offset, i as u64);
        assert_eq!(rec.value, value(i as u64));
    }
    let tail = t.log.reader("t", 0, 55).unwrap().read_batch(1000).unwrap();
    assert_eq!(
        tail.iter().map(|r| r.offset).collect::<Vec<_>>(),
        (55..61).collect::<Vec<_>>()
    );
}

#[test]
fn reading_from_an_offset_uses_the_index_not_a_scan() {
    let t = TempLog::new();
    fill(
        &t,
        "t",
        400,
        400,
        WriterOptions {
            segment_bytes: 64 * 1024,
            ..small_segments()
        },
    );
    // Every record is reachable from its own offset.
    for start in [0, 1, 13, 200, 399] {
        let rec = &t.log.reader("t", 0, start).unwrap().read_batch(1).unwrap()[0];
        assert_eq!((rec.offset, rec.value.clone()), (start, value(start)));
    }
    let mut segments = common::files_under(&t.path().join("t/0"));
    segments.retain(|p| p.extension().is_some_and(|e| e == "log"));
    assert!(segments.len() >= 2, "{segments:?}");
    let second_base: u64 = segments[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Destroy the first half of the first (sealed) segment: a reader that scanned from the
    // segment's start would fail, one that jumps through the index does not notice.
    let mut bytes = std::fs::read(&segments[0]).unwrap();
    let half = bytes.len() / 2;
    bytes[..half].fill(0xAB);
    std::fs::write(&segments[0], &bytes).unwrap();
    let from = second_base - 5;
    let recs = t.log.reader("t", 0, from).unwrap().read_batch(10).unwrap();
    let offsets: Vec<u64> = recs.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, (from..from + 10).collect::<Vec<_>>());
    assert_eq!(recs[9].value, value(from + 9));
    let err = t.log.reader("t", 0, 0).unwrap().read_batch(1).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "topic t partition 0: corrupt record in {} at byte 0: implausible record length",
            segments[0].display()
        )
    );
}

#[test]
fn first_offset_at_a_time_comes_from_the_time_index() {
    let t = TempLog::new();
    // Batches of 10 records stamped 1000, 2000, …, 50000 across many segments.
    fill(&t, "t", 500, 10, small_segments());
    let at = |ts| t.log.offset_for_timestamp("t", 0, ts).unwrap();
    assert_eq!(at(i64::MIN), 0);
    assert_eq!(at(0), 0);
    assert_eq!(at(1000), 0);
    assert_eq!(at(1001), 10);
    assert_eq!(at(2000), 10);
    assert_eq!(at(25_500), 250);
    assert_eq!(at(50_000), 490);
    assert_eq!(at(50_001), 500, "after the last record: the end offset");
    let empty = TempLog::new();
    empty.log.create_topic("e", 1).unwrap();
    assert_eq!(empty.log.offset_for_timestamp("e", 0, 5).unwrap(), 0);
}

#[test]
fn append_time_never_goes_backwards() {
    let t = TempLog::new();
    t.log.create_topic("t", 1).unwrap();
    let mut w = t.log.writer("t", 0, small_segments()).unwrap();
    w.append_at([(None, &b"a"[..])], 5000).unwrap();
    w.append_at([(None, &b"b"[..])], 4000).unwrap();
    drop(w);
    // Also across a reopen (the writer recovers the last timestamp from disk).
    let mut w = t.log.writer("t", 0, small_segments()).unwrap();
    w.append_at([(None, &b"c"[..])], 3000).unwrap();
    let recs = t.log.reader("t", 0, 0).unwrap().read_batch(10).unwrap();
    let ts: Vec<i64> = recs.iter().map(|r| r.timestamp_ms).collect();
    assert_eq!(ts, [5000, 5000, 5000]);
}

#[test]
fn torn_tail_is_truncated_and_appends_continue() {
    let t = TempLog::new();
    fill(
        &t,
        "t",
        120,
        120,
        WriterOptions {
            segment_bytes: 1 << 30,
            ..small_segments()
        },
    );
    let seg = t.path().join("t/0/00000000000000000000.log");
    let whole = std::fs::metadata(&seg).unwrap().len();
    // Power loss mid-append: the last record is cut short and garbage follows.
    let last_len = value(119).len() as u64 + key(119).map_or(0, |k| k.len() as u64) + 28;
    let f = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(whole - last_len / 2).unwrap();
    drop(f);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&seg)
        .unwrap()
        .write_all(&[0x5A; 100])
        .unwrap();

    let mut w = t.log.writer("t", 0, small_segments()).unwrap();
    assert_eq!(w.next_offset(), 119, "only whole records survive");
    assert_eq!(std::fs::metadata(&seg).unwrap().len(), whole - last_len);
    assert_eq!(
        w.append([(Some(&b"k"[..]), &b"after"[..])]).unwrap(),
        119..120
    );
    drop(w);

    let recs = t.log.reader("t", 0, 0).unwrap().read_batch(1000).unwrap();
    assert_eq!(recs.len(), 120);
    for (i, rec) in recs[..119].iter().enumerate() {
        assert_eq!(rec.value, value(i as u64));
    }
    assert_eq!(
        (recs[119].offset, recs[119].value.as_slice()),
        (119, &b"after"[..])
    );
}

#[test]
fn a_second_writer_is_refused() {
    let t = TempLog::new();
    t.log.create_topic("orders", 2).unwrap();
    let _first = t.log.writer("orders", 1, WriterOptions::default()).unwrap();
    let err = t
        .log
        .writer("orders", 1, WriterOptions::default())
        .err()
        .unwrap();
    assert_eq!(
        err.to_string(),
        format!(
            "topic orders partition 1 already has a writer (lock held on {})",
            t.path().join("orders/1/writer.lock").display()
        )
    );
    // Another process is refused too, and says which partition.
    let out = run_with_stdin(
        {
            let mut c = t.braid();
            c.args(["produce", "orders"]);
            c
        },
        b"{\"a\":1}\n{\"a\":2}\n",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        common::stderr(&out).contains("topic orders partition 1 already has a writer"),
        "{}",
        common::stderr(&out)
    );
    // The other partition is free.
    t.log.writer("orders", 0, WriterOptions::default()).unwrap();
}

#[test]
fn a_follower_wakes_on_appends_from_another_process() {
    let t = TempLog::new();
    t.log.create_topic("live", 1).unwrap();
    let mut watcher = braid::log::TailWatcher::new().unwrap();
    let signal = watcher.watch(&t.log.partition_dir("live", 0)).unwrap();
    let mut reader = t.log.reader("live", 0, 0).unwrap();
    reader.follow(signal.clone());
    assert!(reader.read_batch(10).unwrap().is_empty());

    let lines: String = (0..50).map(|i| format!("{{\"n\":{i}}}\n")).collect();
    let child = std::thread::spawn({
        let mut cmd = t.braid();
        cmd.args(["produce", "live"]);
        move || run_with_stdin(cmd, lines.as_bytes())
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while seen.len() < 50 {
        let batch = reader.read_batch(100).unwrap();
        if batch.is_empty() {
            assert!(
                Instant::now() < deadline,
                "follower saw {} of 50 records",
                seen.len()
            );
            watcher.wait_timeout(Duration::from_secs(5));
        }
        seen.extend(batch.into_iter().map(|r| r.value));
    }
    common::ok(child.join().unwrap());
    let expected: Vec<Vec<u8>> = (0..50)
        .map(|i| format!("{{\"n\":{i}}}").into_bytes())
        .collect();
    assert_eq!(seen, expected);
    // The other process's appends moved the partition's signal, which the reader follows.
    assert!(signal.generation() > 0);
}

#[test]
fn a_reader_at_the_tail_finds_each_new_segment_of_a_directory_unchanged_for_long() {
    // A reader at the tail lists the partition directory again only when its
    // modification time moved; an hour-old directory is the case where an unchanged time
    // is trusted, and each roll must still be seen.
    let t = TempLog::new();
    t.log.create_topic("t", 1).unwrap();
    let mut w = t.log.writer("t", 0, small_segments()).unwrap();
    let append = |w: &mut braid::log::PartitionWriter, from: u64, to: u64| {
        let recs: Vec<Vec<u8>> = (from..to).map(value).collect();
        assert_eq!(
            w.append(recs.iter().map(|v| (None, v.as_slice()))).unwrap(),
            from..to
        );
    };
    let backdate = || {
        let dir = std::fs::File::open(t.log.partition_dir("t", 0)).unwrap();
        let hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
        dir.set_modified(hour_ago).unwrap();
    };
    append(&mut w, 0, 3);
    backdate();
    let mut r = t.log.reader("t", 0, 0).unwrap();
    let read = |r: &mut braid::log::PartitionReader| -> Vec<u64> {
        let mut offsets = Vec::new();
        loop {
            let batch = r.read_batch(64).unwrap();
            if batch.is_empty() {
                return offsets;
            }
            offsets.extend(batch.iter().map(|rec| rec.offset));
        }
    };
    assert_eq!(read(&mut r), vec![0, 1, 2]);
    let segments = || t.log.partition_info("t", 0).unwrap().segments;
    assert_eq!(segments(), 1);
    // About 300 bytes a record and 4 KiB segments: 40 records roll several times.
    for round in 0..3u64 {
        let from = 3 + round * 40;
        append(&mut w, from, from + 40);
        assert_eq!(
            read(&mut r),
            (from..from + 40).collect::<Vec<_>>(),
            "round {round}"
        );
        backdate();
    }
    assert!(
        segments() > 3,
        "expected rolls, got {} segments",
        segments()
    );
}

#[test]
fn keyed_produce_is_stable_and_unkeyed_is_round_robin() {
    let t = TempLog::new();
    t.log.create_topic("k", 5).unwrap();
    let mut p = t.log.producer("k", WriterOptions::default()).unwrap();
    for i in 0..200u32 {
        let key = format!("c-{i}");
        assert_eq!(
            p.send(Some(key.as_bytes()), b"{}").unwrap(),
            partition_for_key(key.as_bytes(), 5)
        );
    }
    let rr: Vec<u32> = (0..7).map(|_| p.send(None, b"{}").unwrap()).collect();
    assert_eq!(rr, [0, 1, 2, 3, 4, 0, 1]);
    p.flush().unwrap();
    let total: u64 = (0..5)
        .map(|q| t.log.partition_info("k", q).unwrap().end_offset)
        .sum();
    assert_eq!(total, 207);
    // Every stored keyed record sits in the partition its key maps to.
    for q in 0..5 {
        for rec in t.log.reader("k", q, 0).unwrap().read_batch(1000).unwrap() {
            if let Some(k) = rec.key {
                assert_eq!(partition_for_key(&k, 5), q);
            }
        }
    }
}

#[test]
fn topics_persist_and_partition_counts_are_checked() {
    let t = TempLog::new();
    t.log.create_topic("page.viewed", 4).unwrap();
    t.log.create_topic("cart.updated", 2).unwrap();
    // Reopening is idempotent with the same count …
    let again = braid::log::Log::open(t.path()).unwrap();
    assert_eq!(again.create_topic("page.viewed", 4).unwrap().partitions, 4);
    // … and an error with another.
    assert_eq!(
        again
            .create_topic("page.viewed", 3)
            .unwrap_err()
            .to_string(),
        "topic page.viewed already exists with 4 partitions, not 3"
    );
    let names: Vec<(String, u32)> = again
        .topics()
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.partitions))
        .collect();
    assert_eq!(
        names,
        [("cart.updated".into(), 2), ("page.viewed".into(), 4)]
    );
    assert_eq!(
        again.reader("nope", 0, 0).err().unwrap().to_string(),
        format!(
            "topic nope does not exist in {} (create it with `braid topic create nope --partitions N`)",
            t.path().display()
        )
    );
    assert_eq!(
        again
            .writer("cart.updated", 2, WriterOptions::default())
            .err()
            .unwrap()
            .to_string(),
        "topic cart.updated has 2 partitions; partition 2 does not exist"
    );
}

#[test]
fn a_limited_reader_reads_oversized_records_through_and_keeps_a_prefix() {
    let t = TempLog::new();
    t.log.create_topic("big", 1).unwrap();
    let huge: Vec<u8> = (0..6_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let opts = WriterOptions {
        segment_bytes: 1 << 30,
        ..small_segments()
    };
    let mut w = t.log.writer("big", 0, opts).unwrap();
    w.append([
        (Some(&b"k0"[..]), &b"small"[..]),
        (Some(&b"k1"[..]), huge.as_slice()),
        (None, &b"after"[..]),
    ])
    .unwrap();
    drop(w);

    let mut limited = t.log.reader("big", 0, 0).unwrap();
    limited.limit_values(1 << 20);
    let mut seen = Vec::new();
    let n = limited
        .read_into(10, |view, buf| {
            seen.push((
                view.offset,
                view.key.clone().map(|k| buf[k].to_vec()),
                buf[view.value.clone()].to_vec(),
                view.value_len,
            ));
        })
        .unwrap();
    assert_eq!(n, 3);
    assert_eq!(seen[0], (0, Some(b"k0".to_vec()), b"small".to_vec(), 5));
    // The oversized value: its length, and a prefix of it, not all of it.
    assert_eq!(
        seen[1],
        (1, Some(b"k1".to_vec()), huge[..4096].to_vec(), huge.len())
    );
    assert_eq!(seen[2], (2, None, b"after".to_vec(), 5));
    // An unlimited reader still gets it whole.
    let all = t.log.reader("big", 0, 0).unwrap().read_batch(10).unwrap();
    assert_eq!(all[1].value, huge);

    // A bit flipped inside the big record: its checksum, computed while reading it
    // through, fails, so the limited reader hands out nothing from there on (the active
    // segment's tail counts as not yet written), never a corrupt record.
    let seg = t.path().join("big/0/00000000000000000000.log");
    let mut bytes = std::fs::read(&seg).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let mut limited = t.log.reader("big", 0, 0).unwrap();
    limited.limit_values(1 << 20);
    let offsets: Vec<u64> = limited
        .read_batch(10)
        .unwrap()
        .iter()
        .map(|r| r.offset)
        .collect();
    assert_eq!(offsets, [0]);
}
