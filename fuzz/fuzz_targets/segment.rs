//! Arbitrary bytes as a partition's segment file: readers return records or stop at a
//! clean end, a writer's recovery truncates the corrupt tail, and the records read
//! after it are a prefix of those read before. Never a panic, never a hang.
#![no_main]

use braid::log::{Log, WriterOptions};
use libfuzzer_sys::fuzz_target;

fn read_all(log: &Log) -> Option<Vec<(u64, Vec<u8>)>> {
    let mut reader = log.reader("t", 0, 0).ok()?;
    let mut out = Vec::new();
    loop {
        match reader.read_batch(64) {
            Ok(batch) if batch.is_empty() => return Some(out),
            Ok(batch) => out.extend(batch.into_iter().map(|r| (r.offset, r.value))),
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
    if let Ok(mut writer) = log.writer("t", 0, WriterOptions::default()) {
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
