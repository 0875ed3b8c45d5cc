//! Arbitrary bytes as a partition's segment file: readers return records or stop at a
//! clean end, a reader with a value limit (which reads long records through instead of
//! buffering them) returns the same records with each value cut to a prefix, a
//! writer's recovery truncates the corrupt tail, and the records read after it are a
//! prefix of those read before. Never a panic, never a hang.
#![no_main]

use braid::log::{FsyncPolicy, Log, WriterOptions};
use libfuzzer_sys::fuzz_target;

fn read_all(log: &Log) -> Option<Vec<(u64, Vec<u8>)>> {
    read_limited(log, usize::MAX).map(|records| {
        records
            .into_iter()
            .map(|(offset, value, len)| {
                assert_eq!(value.len(), len);
                (offset, value)
            })
            .collect()
    })
}

/// (offset, value as handed over, the value's length in the log).
fn read_limited(log: &Log, limit: usize) -> Option<Vec<(u64, Vec<u8>, usize)>> {
    let mut reader = log.reader("t", 0, 0).ok()?;
    reader.limit_values(limit);
    let mut out = Vec::new();
    loop {
        let read = reader.read_into(64, |view, buf| {
            out.push((view.offset, buf[view.value.clone()].to_vec(), view.value_len));
        });
        match read {
            Ok(0) => return Some(out),
            Ok(_) => {}
            // A corrupt frame in the middle is an error, reported, not a crash.
            Err(_) => return Some(out),
        }
        // Frames are at least a header long: the reader cannot loop forever.
        assert!(out.len() <= 1 << 20);
    }
}

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::TempDir::new().expect("temp dir");
    let log = Log::open(dir.path().join("log")).expect("log");
    log.create_topic("t", 1).expect("topic");
    let part = log.partition_dir("t", 0);
    std::fs::write(part.join(format!("{:020}.log", 0)), data).expect("segment");
    let before = read_all(&log);
    // Values over 16 bytes are read through: the same records, each a prefix.
    if let (Some(whole), Some(cut)) = (&before, read_limited(&log, 16)) {
        assert_eq!(whole.len(), cut.len());
        for ((offset, value), (cut_offset, prefix, len)) in whole.iter().zip(&cut) {
            assert_eq!((offset, value.len()), (cut_offset, *len));
            assert!(value.starts_with(prefix));
            assert!(value.len() <= 16 || prefix.len() <= 4096);
        }
    }
    // No fsync: what is checked is the bytes, and a sync per run would cap the fuzzer
    // at a few dozen runs a second.
    let options = WriterOptions {
        fsync: FsyncPolicy::Never,
        ..WriterOptions::default()
    };
    if let Ok(mut writer) = log.writer("t", 0, options) {
        writer.append([(None, &b"{}"[..])]).expect("append after recovery");
        drop(writer);
        let after = read_all(&log).unwrap_or_default();
        if let Some(before) = before {
            let kept = after.len().saturating_sub(1);
            assert!(kept <= before.len());
            assert_eq!(after[..kept], before[..kept]);
        }
    }
});
