//! The embedded log against a plain `Vec` model: random appends, writer restarts, torn tails
//! and reads from random offsets must agree with the model exactly.

mod common;

use braid::log::{FsyncPolicy, WriterOptions};
use common::TempLog;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(Option<Vec<u8>>, Vec<u8>)>),
    Reopen,
    /// Cut this many bytes (1 ≤ n < frame size) off the last record, as a crash mid-write.
    Tear(usize),
    Read {
        from: u64,
        max: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let record = (
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
        proptest::collection::vec(any::<u8>(), 0..600),
    );
    prop_oneof![
        4 => proptest::collection::vec(record, 1..20).prop_map(Op::Append),
        1 => Just(Op::Reopen),
        1 => (1usize..10_000).prop_map(Op::Tear),
        3 => (0u64..300, 1usize..80).prop_map(|(from, max)| Op::Read { from, max }),
    ]
}

const OPTS: WriterOptions = WriterOptions {
    segment_bytes: 2048,
    index_interval_bytes: 128,
    fsync: FsyncPolicy::Never,
};

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn log_matches_a_vec(ops in proptest::collection::vec(op(), 1..40)) {
        let t = TempLog::new();
        t.log.create_topic("m", 1).unwrap();
        let mut model: Vec<(Option<Vec<u8>>, Vec<u8>)> = Vec::new();
        let mut writer = Some(t.log.writer("m", 0, OPTS).unwrap());
        for op in ops {
            match op {
                Op::Append(batch) => {
                    let w = writer.get_or_insert_with(|| t.log.writer("m", 0, OPTS).unwrap());
                    let got = w
                        .append(batch.iter().map(|(k, v)| (k.as_deref(), v.as_slice())))
                        .unwrap();
                    prop_assert_eq!(got.start, model.len() as u64);
                    model.extend(batch);
                    prop_assert_eq!(got.end, model.len() as u64);
                }
                Op::Reopen => {
                    drop(writer.take()); // releases the partition's lock first
                    writer = Some(t.log.writer("m", 0, OPTS).unwrap());
                    prop_assert_eq!(writer.as_ref().unwrap().next_offset(), model.len() as u64);
                }
                Op::Tear(n) => {
                    writer = None;
                    let Some((k, v)) = model.last() else { continue };
                    let frame = 28 + k.as_ref().map_or(0, Vec::len) + v.len();
                    let mut segs = common::files_under(&t.path().join("m/0"));
                    segs.retain(|p| p.extension().is_some_and(|e| e == "log"));
                    let last = segs.last().unwrap();
                    let len = std::fs::metadata(last).unwrap().len() as usize;
                    if len < frame {
                        continue; // the last record sits in a sealed segment: not tearable
                    }
                    let cut = 1 + n % (frame - 1);
                    std::fs::OpenOptions::new().write(true).open(last).unwrap()
                        .set_len((len - cut) as u64).unwrap();
                    model.pop();
                    let w = t.log.writer("m", 0, OPTS).unwrap();
                    prop_assert_eq!(w.next_offset(), model.len() as u64);
                    writer = Some(w);
                }
                Op::Read { from, max } => {
                    let got = t.log.reader("m", 0, from).unwrap().read_batch(max).unwrap();
                    let start = (from as usize).min(model.len());
                    let want = &model[start..(start + max).min(model.len())];
                    prop_assert_eq!(got.len(), want.len());
                    for (i, (rec, (k, v))) in got.iter().zip(want).enumerate() {
                        prop_assert_eq!(rec.offset, (start + i) as u64);
                        prop_assert_eq!(&rec.key, k);
                        prop_assert_eq!(&rec.value, v);
                    }
                }
            }
        }
        let info = t.log.partition_info("m", 0).unwrap();
        prop_assert_eq!(info.end_offset, model.len() as u64);
    }
}
