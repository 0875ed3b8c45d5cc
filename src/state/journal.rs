//! The outbox journal: each checkpoint's output records, in a file of their own (or,
//! when small, inline in the checkpoint's batch).
//!
//! A checkpoint's output is written to `outbox/<n>.journal` in the state directory
//! (`n` counts up), fsynced, and only then is the checkpoint's RocksDB batch committed,
//! with one small `outbox` entry that names journal `n` and gives its length and CRC.
//! So the batch stays atomic — a journal counts only once a committed batch names it —
//! while the output's bytes go through one sequential write instead of RocksDB's
//! write-ahead log, memtable, flush and compaction: through RocksDB they were written
//! twice and compacted away once, for records deleted a second later, once published.
//! On the journey benchmark they are 60% of the checkpoint bytes; the journal took 100–130
//! MiB off the bounded run's peak memory and 3–12% off its CPU time (paired runs).
//!
//! A small output — at most [`INLINE_MAX_BYTES`], as a live job with short checkpoints
//! makes — goes *inline* instead: the same bytes, as one value in the batch beside its
//! entry. The file's create, fsync and directory fsync then cost more than the bytes
//! (over a quarter of a commit's time at 10 ms checkpoints), and its removal once
//! published needs no fsync of its own (entry and bytes go in one write, so neither can
//! outlive the other): that fsynced removal contended with the next commit's.
//!
//! Invariants (the store upholds them, [`super::StateStore`]):
//! - A journal file is complete and fsynced (with its directory entry) before the batch
//!   that names it is written; a crash in between leaves a file no batch names, which
//!   the next writable open deletes.
//! - A journal is removed once every record in it is acknowledged: first its entry,
//!   with an fsynced write, then the file. So a named journal always has its file;
//!   a file without a name is only ever such a leftover. An inline journal's entry and
//!   bytes are removed together, in one write that need not be fsynced (a lost removal
//!   re-offers records the publisher finds already published).
//! - The bytes (a file's or an inline journal's) are checked against the length and CRC
//!   its entry gives before any of its records is used.
//!
//! Format (a file's and an inline journal's): a sequence of records, each a u32
//! little-endian length followed by that many bytes of postcard ([`JournalRecord`]), in
//! (topic, partition, seq) order.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{OutboxEntry, bytes, opt_bytes};

/// The journal directory inside a state directory.
pub const JOURNAL_DIR: &str = "outbox";

/// The largest journal written inline, in the checkpoint's batch (module doc): a live
/// job's 10 ms checkpoint at 50,000 events/s has tens of KB of output, a bounded run's
/// 1 s checkpoint tens of MB, which stay out of RocksDB's memtables.
pub const INLINE_MAX_BYTES: usize = 1 << 20;

/// What the `outbox` column family records of one committed journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalMeta {
    /// Length of the file in bytes.
    pub bytes: u64,
    /// CRC-32 (IEEE) of the whole file.
    pub crc: u32,
    /// Per output topic and partition in the journal, its highest seq: the journal is
    /// done once every one of them is acknowledged.
    pub last: Vec<(String, u32, u64)>,
}

/// One output record in a journal file.
#[derive(Serialize, Deserialize)]
struct JournalRecord<'a> {
    #[serde(borrow)]
    topic: &'a str,
    partition: u32,
    seq: u64,
    #[serde(borrow, serialize_with = "opt_bytes")]
    key: Option<&'a [u8]>,
    #[serde(borrow, serialize_with = "bytes")]
    value: &'a [u8],
}

/// Path of journal `n` in state directory `dir`.
pub fn path(dir: &Path, n: u64) -> PathBuf {
    dir.join(JOURNAL_DIR).join(format!("{n:020}.journal"))
}

/// Writes `entries` (sorted by topic, partition, seq) as journal `n`, replacing a
/// leftover of that number, and fsyncs it and its directory entry.
pub fn write(dir: &Path, n: u64, entries: &[&OutboxEntry]) -> std::io::Result<JournalMeta> {
    let journals = dir.join(JOURNAL_DIR);
    if !journals.is_dir() {
        // Owner-only, like the rest of the state directory: it holds copies of the input.
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new().mode(0o700).create(&journals)?;
        File::open(dir)?.sync_all()?;
    }
    let file = File::create(path(dir, n))?;
    // Large writes: a checkpoint's output is tens of MB.
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let meta = encode_into(&mut out, entries)?;
    let file = out.into_inner().map_err(|e| e.into_error())?;
    file.sync_data()?;
    File::open(&journals)?.sync_all()?;
    Ok(meta)
}

/// Whether `entries` go inline, in the checkpoint's batch, rather than to a file: when
/// their journal would be at most `max` bytes (counted from above).
pub fn fits_inline(entries: &[&OutboxEntry], max: usize) -> bool {
    let mut bytes = 0usize;
    for e in entries {
        // The length prefix, the partition and seq varints (at most 5 + 10 bytes), the
        // option tag, and at most 5 bytes for each length's varint.
        bytes += 4 + 16 + e.topic.len() + 5 + e.key.as_ref().map_or(0, |k| k.len() + 5);
        bytes += e.stored.len() + 5;
        if bytes > max {
            return false;
        }
    }
    true
}

/// `entries` (sorted by topic, partition, seq) in the journal format, for an inline
/// journal.
pub fn encode(entries: &[&OutboxEntry]) -> std::io::Result<(Vec<u8>, JournalMeta)> {
    let mut out = Vec::new();
    let meta = encode_into(&mut out, entries)?;
    Ok((out, meta))
}

fn encode_into(out: &mut impl Write, entries: &[&OutboxEntry]) -> std::io::Result<JournalMeta> {
    let mut crc = crc32fast::Hasher::new();
    let mut scratch = Vec::new();
    let mut bytes = 0u64;
    let mut last: Vec<(String, u32, u64)> = Vec::new();
    for e in entries {
        let record = JournalRecord {
            topic: &e.topic,
            partition: e.partition,
            seq: e.seq,
            key: e.key.as_deref(),
            value: &e.stored,
        };
        scratch.clear();
        scratch.extend_from_slice(&[0; 4]);
        postcard::serialize_with_flavor(&record, super::Scratch(&mut scratch))
            .map_err(std::io::Error::other)?;
        let len = u32::try_from(scratch.len() - 4).map_err(std::io::Error::other)?;
        scratch[..4].copy_from_slice(&len.to_le_bytes());
        crc.update(&scratch);
        out.write_all(&scratch)?;
        bytes += scratch.len() as u64;
        match last.last_mut() {
            Some((t, p, s)) if *t == e.topic && *p == e.partition => *s = (*s).max(e.seq),
            _ => last.push((e.topic.clone(), e.partition, e.seq)),
        }
    }
    Ok(JournalMeta {
        bytes,
        crc: crc.finalize(),
        last,
    })
}

/// Reads journal file `n` back, checked against `meta`; the reason when it does not
/// match.
pub fn read(dir: &Path, n: u64, meta: &JournalMeta) -> Result<Vec<OutboxEntry>, String> {
    let data = std::fs::read(path(dir, n)).map_err(|e| e.to_string())?;
    decode(&data, meta)
}

/// A journal's records from its bytes (a file's or an inline journal's), checked
/// against `meta`; the reason when they do not match.
pub fn decode(data: &[u8], meta: &JournalMeta) -> Result<Vec<OutboxEntry>, String> {
    if data.len() as u64 != meta.bytes {
        return Err(format!(
            "{} bytes, its checkpoint wrote {}",
            data.len(),
            meta.bytes
        ));
    }
    let crc = crc32fast::hash(data);
    if crc != meta.crc {
        return Err(format!(
            "CRC {crc:08x}, its checkpoint wrote {:08x}",
            meta.crc
        ));
    }
    let mut entries = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        let at = data.len() - rest.len();
        let (len, tail) = rest
            .split_first_chunk::<4>()
            .ok_or_else(|| format!("record at byte {at}: truncated length"))?;
        let len = u32::from_le_bytes(*len) as usize;
        let (body, tail) = tail
            .split_at_checked(len)
            .ok_or_else(|| format!("record at byte {at}: {len} bytes declared, fewer left"))?;
        let r: JournalRecord<'_> =
            postcard::from_bytes(body).map_err(|e| format!("record at byte {at}: {e}"))?;
        entries.push(OutboxEntry {
            topic: r.topic.to_string(),
            partition: r.partition,
            seq: r.seq,
            key: r.key.map(<[u8]>::to_vec),
            stored: r.value.to_vec(),
        });
        rest = tail;
    }
    Ok(entries)
}

/// The numbers of the journal files in `dir` (none when it has no journal directory).
pub fn list(dir: &Path) -> std::io::Result<Vec<u64>> {
    let entries = match std::fs::read_dir(dir.join(JOURNAL_DIR)) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for entry in entries {
        let name = entry?.file_name();
        if let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_suffix(".journal"))
            .and_then(|s| s.parse().ok())
        {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(topic: &str, partition: u32, seq: u64, key: Option<&[u8]>) -> OutboxEntry {
        OutboxEntry {
            topic: topic.into(),
            partition,
            seq,
            key: key.map(<[u8]>::to_vec),
            stored: format!("value {seq}").into_bytes(),
        }
    }

    #[test]
    fn a_journal_reads_back_what_was_written_and_names_each_partitions_last_seq() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = [
            entry("a", 0, 1, Some(b"k\x00")),
            entry("a", 0, 2, None),
            entry("a", 3, 7, Some(b"")),
            entry("b", 0, 4, None),
        ];
        let refs: Vec<&OutboxEntry> = entries.iter().collect();
        let meta = write(tmp.path(), 3, &refs).unwrap();
        assert_eq!(
            meta.last,
            vec![("a".into(), 0, 2), ("a".into(), 3, 7), ("b".into(), 0, 4)]
        );
        assert_eq!(
            std::fs::metadata(path(tmp.path(), 3)).unwrap().len(),
            meta.bytes
        );
        assert_eq!(read(tmp.path(), 3, &meta).unwrap(), entries.to_vec());
        assert_eq!(list(tmp.path()).unwrap(), vec![3]);
    }

    proptest! {
        #[test]
        fn what_fits_inline_encodes_within_the_bound_and_reads_back(
            parts in prop::collection::vec(
                (
                    "[a-z.]{0,12}",
                    any::<u32>(),
                    any::<u64>(),
                    prop::option::of(prop::collection::vec(any::<u8>(), 0..40)),
                    prop::collection::vec(any::<u8>(), 0..300),
                ),
                0..20,
            ),
            max in 0usize..4096,
        ) {
            let entries: Vec<OutboxEntry> = parts
                .into_iter()
                .map(|(topic, partition, seq, key, stored)| OutboxEntry {
                    topic,
                    partition,
                    seq,
                    key,
                    stored,
                })
                .collect();
            let refs: Vec<&OutboxEntry> = entries.iter().collect();
            let (bytes, meta) = encode(&refs).unwrap();
            prop_assert_eq!(bytes.len() as u64, meta.bytes);
            if fits_inline(&refs, max) {
                prop_assert!(bytes.len() <= max, "{} > {max}", bytes.len());
            }
            prop_assert_eq!(decode(&bytes, &meta).unwrap(), entries);
        }
    }

    #[test]
    fn a_damaged_journal_is_refused_with_the_reason() {
        let tmp = tempfile::tempdir().unwrap();
        let entries = [entry("a", 0, 1, None), entry("a", 0, 2, None)];
        let refs: Vec<&OutboxEntry> = entries.iter().collect();
        let meta = write(tmp.path(), 1, &refs).unwrap();
        let file = path(tmp.path(), 1);
        let mut data = std::fs::read(&file).unwrap();
        data[6] ^= 0xFF;
        std::fs::write(&file, &data).unwrap();
        let crc = crc32fast::hash(&data);
        assert_eq!(
            read(tmp.path(), 1, &meta).unwrap_err(),
            format!("CRC {crc:08x}, its checkpoint wrote {:08x}", meta.crc)
        );
        std::fs::write(&file, &data[..10]).unwrap();
        assert_eq!(
            read(tmp.path(), 1, &meta).unwrap_err(),
            format!("10 bytes, its checkpoint wrote {}", meta.bytes)
        );
        // Length and CRC right, framing wrong: a record claims more than is left.
        let bad = [200u8, 0, 0, 0, 1];
        let meta = JournalMeta {
            bytes: 5,
            crc: crc32fast::hash(&bad),
            last: Vec::new(),
        };
        std::fs::write(&file, bad).unwrap();
        assert_eq!(
            read(tmp.path(), 1, &meta).unwrap_err(),
            "record at byte 0: 200 bytes declared, fewer left"
        );
    }
}
