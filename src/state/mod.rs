//! The RocksDB state store: the one durable place of a running job.
//!
//! Operators keep their open state in memory and write it behind at each checkpoint.
//! A [`Checkpoint`] carries everything that changed since the previous one — upserted
//! and deleted per-key states, source positions, the watermark snapshot and the output
//! records produced since (the outbox) — and [`StateStore::commit`] writes it as ONE
//! RocksDB `WriteBatch` with the WAL fsynced. The output records themselves go to a
//! [`journal`] that the batch names — a file fsynced first, or when small, bytes in the
//! batch itself: they count only once it is committed. That is the invariant recovery
//! rests on: after a crash the store holds exactly the last committed checkpoint, never
//! a part of one, so positions, state and not-yet-published output always agree.
//!
//! Other invariants:
//! - A directory is opened only if it is a braid state store of this layout version
//!   and of the same plan fingerprint; anything else is an error naming the directory,
//!   never a silent fresh start. An empty or missing directory is created.
//! - One writer: RocksDB's `LOCK` file excludes a second open, in this or another
//!   process. [`StateStore::open_read_only`] reads alongside a writer (as of the
//!   moment it opened) for `braid inspect`.
//! - Only the checkpoint (journal file if any, then batch) is fsynced, and the removal
//!   of a journal file's entry once its every record is acknowledged (so that a named
//!   journal always has its file).
//!   Other acks of published output are not (a lost ack re-offers entries whose seq the
//!   publisher has already written, so the publisher skips seqs it finds published).
//!
//! Values are postcard-encoded serde values; key encoding lives in [`keys`]. The bulky
//! values — key states and outbox records — are stored LZ4-compressed ([`pack`]): they
//! are JSON-heavy, so compressing them on the threads that produce them (the shards)
//! shrinks what the single committer writes (batch, WAL, memtables, flushes, journals)
//! about twofold.
//!
//! A key's state is written through [`Persist`]: a *head* (the whole state, for most
//! kinds) and optionally *chunks*. Sessions keep their events in chunks, each event
//! written once, at the first checkpoint after it arrived, while the small head (session
//! bounds, remembered journeys, the chunk list) is rewritten whenever the key changes.
//! Rewriting whole states instead made a checkpoint cost the size of every open
//! session it touched, payloads included: on the journey benchmark with 100 ms
//! checkpoints, 1,190 MB of batches against 688 MB now (docs/semantics.md).

pub mod journal;
pub mod keys;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use crate::fault::{CrashPoint, fail_point};
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamily, ColumnFamilyDescriptor, DB, DBCompressionType,
    IteratorMode, Options, WriteBatch, WriteBufferManager, WriteOptions,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use journal::JournalMeta;
use keys::{
    ALL_CFS, CF_CHUNKS, CF_KEYS, CF_META, CF_OUTBOX, CF_POSITIONS, FORMAT_VERSION, KeyError,
    META_FINGERPRINT, META_FORMAT_VERSION, META_NEXT_JOURNAL, META_WATERMARKS, OutboxKey,
    UPGRADES_FROM,
};

/// Errors of the state store; every one names the state directory.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error(
        "state directory {dir} is locked by another open store (another `braid run` on the same state?)"
    )]
    Locked { dir: PathBuf },
    #[error("state directory {dir} is not a braid state store ({reason}); refusing to use it")]
    NotAStateStore { dir: PathBuf, reason: String },
    #[error(
        "state directory {dir} was written for plan fingerprint {stored:032x}, but this plan has fingerprint {expected:032x}; the topology changed in a way the state cannot follow: replay into a new state directory"
    )]
    FingerprintMismatch {
        dir: PathBuf,
        stored: u128,
        expected: u128,
    },
    #[error(
        "state directory {dir} has layout version {found}, this braid reads version {expected}"
    )]
    UnsupportedVersion {
        dir: PathBuf,
        found: u32,
        expected: u32,
    },
    // The causes (`source`) are not repeated in the messages: error chains print them.
    #[error("state directory {dir}: RocksDB error while {action}")]
    Rocks {
        dir: PathBuf,
        action: &'static str,
        source: rocksdb::Error,
    },
    #[error("state directory {dir}: corrupt entry in column family `{cf}` at key {key}: {reason}")]
    Corrupt {
        dir: PathBuf,
        cf: &'static str,
        key: EscapedBytes,
        reason: String,
    },
    #[error("state directory {dir}: cannot read it")]
    Io {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// A checkpoint write that failed outside RocksDB's own error reporting (an injected
    /// fault: `BRAID_FAIL_AT=commit:<n>`).
    #[error("state directory {dir}: writing checkpoint failed")]
    WriteFailed {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "state directory {dir}: outbox journal {file} is corrupt ({reason}); restore the state directory or replay into a new one"
    )]
    CorruptJournal {
        dir: PathBuf,
        file: PathBuf,
        reason: String,
    },
    #[error("state directory {dir} is open read-only; cannot {action}")]
    ReadOnly { dir: PathBuf, action: &'static str },
    #[error("cannot encode {what} for the state store: {source}")]
    Encode {
        what: &'static str,
        source: postcard::Error,
    },
}

/// Raw key bytes shown with non-printable bytes escaped, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EscapedBytes(pub Vec<u8>);

impl fmt::Display for EscapedBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

/// Encodes a serde value the way the store stores it (checkpoint upserts, watermarks).
pub fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> Result<Vec<u8>, StateError> {
    postcard::to_stdvec(value).map_err(|source| StateError::Encode { what, source })
}

/// Values shorter than this are packed as an LZ4 block of literals only, uncompressed.
/// Searching one for matches costs more than it saves: lz4_flex allocates and clears an
/// 8 KiB match table for every value, and finds little to match in one event (225 bytes
/// of JSON: 1.10x) or a head (a key and a few numbers). Heads, rewritten at every
/// checkpoint that touches their key, are values of this size.
pub const PACK_LITERAL_BELOW: usize = 384;

/// Compresses a value for the store (LZ4 block, uncompressed size prepended; below
/// [`PACK_LITERAL_BELOW`] bytes, a block of literals, which every LZ4 decoder reads).
///
/// Compressed into a per-thread buffer of the worst-case size, then copied out at its
/// real size: compressing straight into a worst-case `Vec` left every packed value
/// holding the capacity of its uncompressed size (59 MB of the journey benchmark's 554 MB
/// peak heap).
pub fn pack(raw: &[u8]) -> Vec<u8> {
    if raw.len() < PACK_LITERAL_BELOW {
        return pack_literals(raw);
    }
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let bound = 4 + lz4_flex::block::get_maximum_output_size(raw.len());
        if scratch.len() < bound {
            scratch.resize(bound, 0);
        }
        match lz4_flex::block::compress_into(raw, &mut scratch[4..bound]) {
            Ok(n) => {
                let mut packed = Vec::with_capacity(4 + n);
                packed.extend_from_slice(&(raw.len() as u32).to_le_bytes());
                packed.extend_from_slice(&scratch[4..4 + n]);
                packed
            }
            // Not expected with a worst-case buffer; the allocating path cannot fail.
            Err(_) => lz4_flex::block::compress_prepend_size(raw),
        }
    })
}

/// `raw` as one LZ4 sequence of literals and no match (the form of a block's last
/// sequence), its size prepended: the token's high nibble holds the length up to 14; 15
/// says more bytes follow, each adding its value, until one below 255.
fn pack_literals(raw: &[u8]) -> Vec<u8> {
    let n = raw.len();
    let mut packed = Vec::with_capacity(4 + 1 + (n / 255 + 1) + n);
    packed.extend_from_slice(&(n as u32).to_le_bytes());
    if n < 15 {
        packed.push((n as u8) << 4);
    } else {
        packed.push(0xF0);
        let mut rest = n - 15;
        while rest >= 255 {
            packed.push(255);
            rest -= 255;
        }
        packed.push(rest as u8);
    }
    packed.extend_from_slice(raw);
    packed
}

/// The most bytes an LZ4 block of `compressed` bytes can hold: one byte expands to at
/// most 255. A packed value declaring more is corrupt.
fn max_unpacked_size(compressed: usize) -> usize {
    compressed.saturating_mul(255).saturating_add(16)
}

/// Reverses [`pack`]. A declared size beyond what LZ4 can expand the input to is
/// corruption, refused before allocating it.
pub fn unpack(stored: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    unpack_into(stored, &mut out, 0)?;
    Ok(out)
}

/// [`unpack`], appending to `out` (with `room` bytes of capacity to spare after it); on an
/// error `out` is left as it was.
pub fn unpack_into(stored: &[u8], out: &mut Vec<u8>, room: usize) -> Result<(), String> {
    let Some((size, body)) = stored.split_first_chunk::<4>() else {
        return Err(format!(
            "{} bytes, too short for a packed value",
            stored.len()
        ));
    };
    let size = u32::from_le_bytes(*size) as usize;
    if size > max_unpacked_size(body.len()) {
        return Err(format!(
            "declares {size} bytes uncompressed from {} compressed",
            body.len()
        ));
    }
    let (Ok(body_len), Ok(capacity)) = (i32::try_from(body.len()), i32::try_from(size)) else {
        return Err(format!(
            "declares {size} bytes uncompressed from {} compressed, beyond an LZ4 block",
            body.len()
        ));
    };
    out.reserve(size + room);
    let start = out.len();
    let spare = &mut out.spare_capacity_mut()[..size];
    // Decompressed by the LZ4 reference library (the one RocksDB links) rather than
    // lz4_flex: on journey records it takes 0.57x the instructions (callgrind), and it
    // writes into the spare capacity, so the bytes need not be zeroed first. Packing
    // stays with lz4_flex: the same format, and no faster in C.
    // SAFETY: `LZ4_decompress_safe` reads at most `body_len` bytes of `body` and writes
    // at most `capacity` bytes into `spare`, which has that length, whatever the input;
    // the result counts the bytes it wrote, so exactly those are initialised.
    let n = unsafe {
        lz4_sys::LZ4_decompress_safe(
            body.as_ptr().cast(),
            spare.as_mut_ptr().cast(),
            body_len,
            capacity,
        )
    };
    match usize::try_from(n) {
        Ok(n) if n == size => {
            // SAFETY: the `n == size` bytes after `start` were written just above.
            unsafe { out.set_len(start + size) };
            Ok(())
        }
        Ok(n) => Err(format!("declares {size} bytes uncompressed, holds {n}")),
        Err(_) => Err(format!(
            "not an LZ4 block of {size} bytes (malformed at byte {} of {})",
            n.unsigned_abs().saturating_sub(1),
            body.len()
        )),
    }
}

/// Encodes a key state for a checkpoint upsert: postcard, then [`pack`].
pub fn encode_packed<T: Serialize + ?Sized>(
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StateError> {
    encode_packed_with(&mut Vec::new(), what, value)
}

/// [`encode_packed`] through a scratch buffer the caller keeps: a checkpoint encodes
/// tens of thousands of states, and growing a fresh buffer for each copies every one
/// several times over.
pub fn encode_packed_with<T: Serialize + ?Sized>(
    scratch: &mut Vec<u8>,
    what: &'static str,
    value: &T,
) -> Result<Vec<u8>, StateError> {
    encode_into(scratch, what, value)?;
    Ok(pack(scratch))
}

/// Encodes a serde value (postcard) into `scratch`, replacing what it held.
fn encode_into<T: Serialize + ?Sized>(
    scratch: &mut Vec<u8>,
    what: &'static str,
    value: &T,
) -> Result<(), StateError> {
    scratch.clear();
    postcard::serialize_with_flavor(value, Scratch(scratch))
        .map_err(|source| StateError::Encode { what, source })
}

/// How a per-key operator state is stored: a head and optionally chunks (module doc).
pub trait Persist: Sized {
    /// Whether states of this kind keep chunks, to be read back with the head.
    const CHUNKED: bool = false;

    /// Writes this state, which changed since it was last written, for a checkpoint.
    /// It may update what it knows of its stored form (which chunks exist). A state
    /// left without content writes `w.delete()` instead of a head.
    fn write(&mut self, w: &mut StateWriter<'_>) -> Result<(), StateError>;

    /// Rebuilds a state from its head and its chunks `(id, bytes)` in id order, both as
    /// [`StateWriter::head`] and [`StateWriter::chunk`] encoded them (unpacked here).
    fn read(head: &[u8], chunks: &[(u32, Vec<u8>)]) -> Result<Self, String>;
}

/// Kinds whose state is stored whole, as its head.
pub trait StoredWhole: Serialize + DeserializeOwned {}

impl<T: StoredWhole> Persist for T {
    fn write(&mut self, w: &mut StateWriter<'_>) -> Result<(), StateError> {
        w.head(self)
    }

    fn read(head: &[u8], _: &[(u32, Vec<u8>)]) -> Result<Self, String> {
        postcard::from_bytes(head).map_err(|e| e.to_string())
    }
}

/// What changed keys write at one checkpoint, gathered by a shard.
#[derive(Debug, Default)]
pub struct KeyWrites {
    pub heads: Vec<(String, Vec<u8>)>,
    pub deletes: Vec<String>,
    pub chunks: Vec<(String, u32, Vec<u8>)>,
    pub chunk_deletes: Vec<(String, u32)>,
}

impl KeyWrites {
    /// Moves `other`'s writes behind these.
    pub fn append(&mut self, mut other: KeyWrites) {
        self.heads.append(&mut other.heads);
        self.deletes.append(&mut other.deletes);
        self.chunks.append(&mut other.chunks);
        self.chunk_deletes.append(&mut other.chunk_deletes);
    }
}

/// The writes of one key, as its [`Persist::write`] makes them: packed on the calling
/// (shard) thread, through a scratch buffer the caller keeps.
pub struct StateWriter<'a> {
    key: &'a str,
    out: &'a mut KeyWrites,
    scratch: &'a mut Vec<u8>,
}

impl<'a> StateWriter<'a> {
    pub fn new(key: &'a str, out: &'a mut KeyWrites, scratch: &'a mut Vec<u8>) -> Self {
        StateWriter { key, out, scratch }
    }

    /// The key's head.
    pub fn head<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), StateError> {
        let bytes = encode_packed_with(self.scratch, "a key state", value)?;
        self.out.heads.push((self.key.to_owned(), bytes));
        Ok(())
    }

    /// The key has no state left (its state deletes its own chunks first).
    pub fn delete(&mut self) {
        self.out.deletes.push(self.key.to_owned());
    }

    /// One chunk; an id is written once and never reused while the key has state.
    pub fn chunk<T: Serialize + ?Sized>(&mut self, id: u32, value: &T) -> Result<(), StateError> {
        let bytes = encode_packed_with(self.scratch, "a chunk of events", value)?;
        self.out.chunks.push((self.key.to_owned(), id, bytes));
        Ok(())
    }

    pub fn delete_chunk(&mut self, id: u32) {
        self.out.chunk_deletes.push((self.key.to_owned(), id));
    }
}

/// A postcard output that appends to a caller's buffer with `extend_from_slice`
/// (postcard's own `to_extend` copies byte by byte, which dominated encoding payloads).
struct Scratch<'a>(&'a mut Vec<u8>);

impl postcard::ser_flavors::Flavor for Scratch<'_> {
    type Output = ();

    fn try_push(&mut self, data: u8) -> postcard::Result<()> {
        self.0.push(data);
        Ok(())
    }

    fn try_extend(&mut self, data: &[u8]) -> postcard::Result<()> {
        self.0.extend_from_slice(data);
        Ok(())
    }

    fn finalize(self) -> postcard::Result<()> {
        Ok(())
    }
}

/// RocksDB tuning of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateOptions {
    /// Shared LRU block cache, bounded so state size does not become memory size.
    pub block_cache_bytes: usize,
    /// All memtables together: a write buffer manager flushes the largest one when they
    /// exceed it, and each column family's memtable is a quarter of it (the busy ones —
    /// keys and chunks; output records are in journals — then fit with room for one
    /// being flushed), at most 64 MiB.
    pub write_buffer_bytes: usize,
    /// The largest checkpoint output written inline, in the batch, rather than to a
    /// journal file ([`journal::INLINE_MAX_BYTES`]; 0: always a file).
    pub inline_journal_bytes: usize,
}

impl Default for StateOptions {
    fn default() -> Self {
        StateOptions {
            block_cache_bytes: 64 << 20,
            write_buffer_bytes: 32 << 20,
            inline_journal_bytes: journal::INLINE_MAX_BYTES,
        }
    }
}

impl StateOptions {
    /// One column family's memtable size.
    fn memtable_bytes(&self) -> usize {
        (self.write_buffer_bytes / 4).clamp(1 << 20, 64 << 20)
    }
}

/// One output record waiting in the outbox to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEntry {
    pub topic: String,
    pub partition: u32,
    /// Monotonically increasing per topic/partition, assigned by the producer of the
    /// checkpoint; the publisher uses it to skip what it has already written.
    pub seq: u64,
    pub key: Option<Vec<u8>>,
    /// The value as the store keeps it; the outbox module owns that format and makes
    /// the published value from it.
    pub stored: Vec<u8>,
}

// serde writes a `[u8]` as a sequence, one `serialize_u8` call per byte: on the journey
// benchmark that loop was 1.6% of all CPU time, in the single committer. postcard
// encodes a byte string and a sequence of u8 identically (length, then the bytes), so
// this changes the speed, not the stored format; reading borrows the bytes either way.
fn bytes<S: serde::Serializer>(v: &&[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(v)
}

fn opt_bytes<S: serde::Serializer>(v: &Option<&[u8]>, s: S) -> Result<S::Ok, S::Error> {
    v.map(Bytes).serialize(s)
}

struct Bytes<'a>(&'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

/// Everything that changed since the previous checkpoint, committed atomically.
#[derive(Debug, Default)]
pub struct Checkpoint<'a> {
    /// Per correlation key, its encoded state (see [`encode`]).
    pub upserts: Vec<(&'a str, Vec<u8>)>,
    /// Keys that have no state left (their chunks are deleted one by one, below).
    pub deletes: Vec<&'a str>,
    /// Chunks of keys' events, written once each: (key, chunk id, packed bytes).
    /// Owned, like the upserts' values, so that each is freed once the batch holds its
    /// copy: a checkpoint's chunks are tens of MB, and the commit's journal write and
    /// syncs take most of its time.
    pub chunks: Vec<(String, u32, Vec<u8>)>,
    /// Chunks no longer needed.
    pub chunk_deletes: &'a [(String, u32)],
    /// Per source topic/partition, the next offset to read.
    pub positions: Vec<(&'a str, u32, u64)>,
    /// The encoded watermark snapshot, when it changed.
    pub watermarks: Option<Vec<u8>>,
    /// Output records produced since the previous checkpoint.
    pub outbox: &'a [OutboxEntry],
}

/// What a commit wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CommitStats {
    /// Heads written.
    pub upserts: usize,
    /// Chunks written.
    pub chunks: usize,
    pub deletes: usize,
    pub positions: usize,
    pub outbox: usize,
    /// Bytes written: the write batch and the outbox journal.
    pub bytes: usize,
    /// Of which: heads and chunks (values only), and the outbox journal.
    pub head_bytes: usize,
    pub chunk_bytes: usize,
    pub outbox_bytes: usize,
}

/// Size estimates of a store (RocksDB properties; approximate by nature).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateStats {
    /// `rocksdb.estimate-live-data-size` summed over the column families (SST files).
    pub live_data_bytes: u64,
    /// `rocksdb.cur-size-all-mem-tables` summed over the column families: data not yet
    /// flushed to SST files, deleted entries included until then.
    pub memtable_bytes: u64,
    /// `rocksdb.estimate-num-keys` of the `keys` column family.
    pub keys: u64,
    /// Outbox journals not yet wholly acknowledged.
    pub outbox: u64,
    /// `rocksdb.estimate-num-keys` of the `positions` column family.
    pub positions: u64,
}

/// An open state store; see the module doc for its invariants.
pub struct StateStore {
    db: DB,
    dir: PathBuf,
    read_only: bool,
    /// The outbox journals the store names, and how far output is acknowledged. The
    /// committer adds journals, the publisher acknowledges: a lock held for bookkeeping
    /// only, never across a write.
    journals: Mutex<Journals>,
    /// [`StateOptions::inline_journal_bytes`].
    inline_max: usize,
}

/// The store's view of its outbox ([`journal`]).
#[derive(Debug, Default)]
struct Journals {
    /// Journals named by the committed store and not yet removed, by number.
    live: BTreeMap<u64, LiveJournal>,
    /// The number of the next journal.
    next: u64,
}

#[derive(Debug, Clone)]
struct LiveJournal {
    meta: JournalMeta,
    /// Its bytes are in the batch (the `outbox` CF), not in a file.
    inline: bool,
    /// Per output topic/partition, how far its records in this journal are
    /// acknowledged (an acknowledgement covers the records committed before it).
    acked: BTreeMap<(String, u32), u64>,
}

impl LiveJournal {
    fn done(&self) -> bool {
        self.meta.last.iter().all(|(t, p, last)| {
            self.acked
                .get(&(t.clone(), *p))
                .is_some_and(|up_to| up_to >= last)
        })
    }

    fn is_acked(&self, e: &OutboxEntry) -> bool {
        self.acked
            .get(&(e.topic.clone(), e.partition))
            .is_some_and(|&up_to| e.seq <= up_to)
    }
}

impl fmt::Debug for StateStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StateStore")
            .field("dir", &self.dir)
            .field("read_only", &self.read_only)
            .finish()
    }
}

fn cf_options(name: &str, opts: &StateOptions, cache: &Cache) -> Options {
    let mut block = BlockBasedOptions::default();
    block.set_block_cache(cache);
    if name == CF_KEYS {
        // Restores and upserts probe keys one by one; most probes of a deleted key miss.
        block.set_bloom_filter(10.0, false);
    }
    let mut cf = Options::default();
    cf.set_block_based_table_factory(&block);
    // Key states and chunks arrive packed already (see `pack`); the outbox holds only
    // journal entries and acknowledgements.
    cf.set_compression_type(
        if name == CF_KEYS || name == CF_OUTBOX || name == CF_CHUNKS {
            DBCompressionType::None
        } else {
            DBCompressionType::Lz4
        },
    );
    cf.set_write_buffer_size(opts.memtable_bytes());
    cf
}

impl StateStore {
    /// Opens or creates the store in `dir` for the plan with `fingerprint`.
    pub fn open(dir: &Path, fingerprint: u128, opts: StateOptions) -> Result<Self, StateError> {
        let dir_buf = dir.to_path_buf();
        let fresh = is_empty_or_missing(dir)?;
        if !fresh {
            check_is_state_store(dir)?;
        } else {
            // Owner-only, like the log: state holds copies of the input.
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| StateError::Io {
                    dir: dir_buf.clone(),
                    source,
                })?;
        }
        let cache = Cache::new_lru_cache(opts.block_cache_bytes);
        let mut db_opts = Options::default();
        db_opts.create_if_missing(fresh);
        db_opts.create_missing_column_families(fresh);
        db_opts.set_compression_type(DBCompressionType::Lz4);
        // Table files written by flushes and compactions are synced a MiB at a time as
        // they are written rather than all at their end: on ext4 (ordered data) a
        // checkpoint's WAL fsync otherwise waits for whatever dirty table data a flush
        // has left, and that was the tail of a live job's commit latency.
        db_opts.set_bytes_per_sync(1 << 20);
        db_opts.set_write_buffer_manager(&WriteBufferManager::new_write_buffer_manager(
            opts.write_buffer_bytes,
            false,
        ));
        let cfs = ALL_CFS
            .iter()
            .map(|name| ColumnFamilyDescriptor::new(*name, cf_options(name, &opts, &cache)));
        let db = DB::open_cf_descriptors(&db_opts, dir, cfs).map_err(|source| {
            if is_lock_error(&source) {
                StateError::Locked {
                    dir: dir_buf.clone(),
                }
            } else {
                StateError::Rocks {
                    dir: dir_buf.clone(),
                    action: "opening",
                    source,
                }
            }
        })?;
        let store = StateStore {
            db,
            dir: dir_buf,
            read_only: false,
            journals: Mutex::default(),
            inline_max: opts.inline_journal_bytes,
        };
        if fresh {
            let mut batch = WriteBatch::default();
            let meta = store.cf(CF_META);
            batch.put_cf(meta, META_FORMAT_VERSION, FORMAT_VERSION.to_be_bytes());
            batch.put_cf(meta, META_FINGERPRINT, fingerprint.to_be_bytes());
            store.write_synced(batch, "creating")?;
        } else {
            store.check_meta(Some(fingerprint))?;
        }
        store.load_journals()?;
        Ok(store)
    }

    /// Opens an existing store read-only, alongside a running writer if any; it sees
    /// the store as of this call.
    pub fn open_read_only(dir: &Path) -> Result<Self, StateError> {
        let dir_buf = dir.to_path_buf();
        if is_empty_or_missing(dir)? {
            return Err(StateError::NotAStateStore {
                dir: dir_buf,
                reason: "it is empty or missing".into(),
            });
        }
        check_is_state_store(dir)?;
        let db = DB::open_cf_for_read_only(&Options::default(), dir, ALL_CFS, false).map_err(
            |source| StateError::Rocks {
                dir: dir_buf.clone(),
                action: "opening read-only",
                source,
            },
        )?;
        let store = StateStore {
            db,
            dir: dir_buf,
            read_only: true,
            journals: Mutex::default(),
            inline_max: 0,
        };
        store.check_meta(None)?;
        store.load_journals()?;
        Ok(store)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The plan fingerprint the store was created for.
    pub fn fingerprint(&self) -> Result<u128, StateError> {
        let raw = self.get_meta(META_FINGERPRINT)?;
        let bytes: [u8; 16] = raw
            .as_deref()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| self.corrupt(CF_META, META_FINGERPRINT, "missing or not 16 bytes"))?;
        Ok(u128::from_be_bytes(bytes))
    }

    /// Writes `cp` as one atomic, fsynced batch.
    pub fn commit(&self, cp: Checkpoint<'_>) -> Result<CommitStats, StateError> {
        self.writable("commit a checkpoint")?;
        fail_point(CrashPoint::Commit).map_err(|source| StateError::WriteFailed {
            dir: self.dir().to_path_buf(),
            source,
        })?;
        // Sized up front: growing a batch of tens of MB by doubling copies it repeatedly.
        let estimate = cp
            .upserts
            .iter()
            .map(|(k, v)| k.len() + v.len() + 16)
            .sum::<usize>()
            + cp.deletes.iter().map(|k| k.len() + 8).sum::<usize>()
            + cp.chunks
                .iter()
                .map(|(k, _, v)| k.len() + v.len() + 24)
                .sum::<usize>()
            + cp.chunk_deletes
                .iter()
                .map(|(k, _)| k.len() + 16)
                .sum::<usize>()
            + 4096;
        let mut batch = WriteBatch::with_capacity_bytes(estimate);
        // Each CF's writes in key order, upserts and deletes alike: a memtable insert
        // then starts its skip-list search from the previous insert's position instead
        // of from the top (in a profile of the journey benchmark, that search fell from
        // 11% of all CPU time to 3%; the deletes, in shard order, still took 2.1%). Every
        // key occurs once per category, so the order changes nothing else.
        let mut cp = cp;
        let (upserts, chunks) = (cp.upserts.len(), cp.chunks.len());
        let head_bytes = cp.upserts.iter().map(|(_, v)| v.len()).sum();
        let chunk_bytes = cp.chunks.iter().map(|(_, _, v)| v.len()).sum();
        cp.upserts.sort_unstable_by(|a, b| a.0.cmp(b.0));
        cp.deletes.sort_unstable();
        cp.chunks
            .sort_unstable_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let mut chunk_deletes: Vec<&(String, u32)> = cp.chunk_deletes.iter().collect();
        chunk_deletes.sort_unstable();
        let mut outbox: Vec<&OutboxEntry> = cp.outbox.iter().collect();
        outbox.sort_unstable_by(|a, b| {
            (&a.topic, a.partition, a.seq).cmp(&(&b.topic, b.partition, b.seq))
        });
        let keys_cf = self.cf(CF_KEYS);
        for (key, value) in cp.upserts.drain(..) {
            batch.put_cf(keys_cf, keys::state_key(key), value);
        }
        for key in &cp.deletes {
            batch.delete_cf(keys_cf, keys::state_key(key));
        }
        let chunks_cf = self.cf(CF_CHUNKS);
        for (key, id, value) in cp.chunks.drain(..) {
            batch.put_cf(chunks_cf, keys::chunk_key(&key, id), value);
        }
        for (key, id) in chunk_deletes {
            batch.delete_cf(chunks_cf, keys::chunk_key(key, *id));
        }
        let positions_cf = self.cf(CF_POSITIONS);
        for (topic, partition, offset) in &cp.positions {
            batch.put_cf(
                positions_cf,
                keys::position_key(topic, *partition),
                offset.to_be_bytes(),
            );
        }
        if let Some(watermarks) = &cp.watermarks {
            batch.put_cf(self.cf(CF_META), META_WATERMARKS, watermarks);
        }
        // The output goes to a journal of its own: a small one inline, a large one to a
        // file fsynced before the batch that names it (journal module doc).
        let journal = if outbox.is_empty() {
            None
        } else {
            let n = self.journals().next;
            let failed = |source| StateError::WriteFailed {
                dir: self.dir.clone(),
                source,
            };
            let inline = journal::fits_inline(&outbox, self.inline_max);
            let meta = if inline {
                let (bytes, meta) = journal::encode(&outbox).map_err(failed)?;
                batch.put_cf(self.cf(CF_OUTBOX), keys::inline_key(n), bytes);
                meta
            } else {
                journal::write(&self.dir, n, &outbox).map_err(failed)?
            };
            batch.put_cf(
                self.cf(CF_OUTBOX),
                keys::journal_key(n),
                encode("an outbox journal's entry", &meta)?,
            );
            // Numbers are never reused, so a reader that opened before a journal was
            // removed cannot mistake a newer file for it.
            batch.put_cf(self.cf(CF_META), META_NEXT_JOURNAL, (n + 1).to_be_bytes());
            Some((n, meta, inline))
        };
        let journal_bytes = journal.as_ref().map_or(0, |(_, m, _)| m.bytes as usize);
        let file_bytes = match journal {
            Some((_, _, false)) => journal_bytes,
            _ => 0,
        };
        let stats = CommitStats {
            upserts,
            chunks,
            deletes: cp.deletes.len(),
            positions: cp.positions.len(),
            outbox: cp.outbox.len(),
            bytes: batch.size_in_bytes() + file_bytes,
            head_bytes,
            chunk_bytes,
            outbox_bytes: journal_bytes,
        };
        self.write_synced(batch, "committing a checkpoint")?;
        if let Some((n, meta, inline)) = journal {
            let mut journals = self.journals();
            journals.live.insert(
                n,
                LiveJournal {
                    meta,
                    inline,
                    acked: BTreeMap::new(),
                },
            );
            journals.next = n + 1;
        }
        Ok(stats)
    }

    fn journals(&self) -> MutexGuard<'_, Journals> {
        // The lock guards bookkeeping that is consistent between statements; a panic
        // elsewhere cannot leave it half-updated.
        self.journals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads the outbox's journal entries and acknowledgements; a writable store also
    /// deletes journal files no committed batch names (left by a crash between the
    /// journal's write and its batch's).
    fn load_journals(&self) -> Result<(), StateError> {
        let mut loaded = Journals::default();
        let mut acks = Vec::new();
        let mut inline = Vec::new();
        for item in self.db.iterator_cf(self.cf(CF_OUTBOX), IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.rocks("reading the outbox", e))?;
            match keys::decode_outbox_key(&key).map_err(|e| self.bad_key(CF_OUTBOX, &key, e))? {
                OutboxKey::Journal(n) => {
                    let meta: JournalMeta = postcard::from_bytes(&value)
                        .map_err(|e| self.corrupt(CF_OUTBOX, &key, e.to_string()))?;
                    let acked = BTreeMap::new();
                    let journal = LiveJournal {
                        meta,
                        inline: false,
                        acked,
                    };
                    loaded.live.insert(n, journal);
                }
                OutboxKey::Inline(n) => inline.push(n),
                OutboxKey::Ack(n, topic, partition) => {
                    let seq = keys::decode_u64(&value)
                        .map_err(|e| self.corrupt(CF_OUTBOX, &key, format!("value: {e}")))?;
                    acks.push((n, topic, partition, seq));
                }
            }
        }
        // A journal's removal deletes its acknowledgements and inline bytes in the same
        // write, so none can outlive it.
        for (n, topic, partition, seq) in acks {
            if let Some(journal) = loaded.live.get_mut(&n) {
                journal.acked.insert((topic, partition), seq);
            }
        }
        for n in inline {
            if let Some(journal) = loaded.live.get_mut(&n) {
                journal.inline = true;
            }
        }
        let io = |source| StateError::Io {
            dir: self.dir.clone(),
            source,
        };
        let files = journal::list(&self.dir).map_err(io)?;
        let recorded = match self.get_meta(META_NEXT_JOURNAL)? {
            Some(raw) => keys::decode_u64(&raw)
                .map_err(|e| self.corrupt(CF_META, META_NEXT_JOURNAL, format!("value: {e}")))?,
            None => 1,
        };
        // Every committed journal recorded its successor in its own batch, so only a
        // leftover file can be numbered beyond `recorded`.
        loaded.next = files.iter().map(|n| n + 1).fold(recorded, u64::max);
        if !self.read_only {
            for n in files.into_iter().filter(|n| !loaded.live.contains_key(n)) {
                std::fs::remove_file(journal::path(&self.dir, n)).map_err(io)?;
            }
        }
        *self.journals() = loaded;
        Ok(())
    }

    /// The committed source positions (next offset to read) per topic/partition.
    pub fn positions(&self) -> Result<BTreeMap<(String, u32), u64>, StateError> {
        let mut out = BTreeMap::new();
        for item in self
            .db
            .iterator_cf(self.cf(CF_POSITIONS), IteratorMode::Start)
        {
            let (key, value) = item.map_err(|e| self.rocks("reading positions", e))?;
            let (topic, partition) =
                keys::decode_position_key(&key).map_err(|e| self.bad_key(CF_POSITIONS, &key, e))?;
            let offset = keys::decode_u64(&value)
                .map_err(|e| self.corrupt(CF_POSITIONS, &key, format!("value: {e}")))?;
            out.insert((topic, partition), offset);
        }
        Ok(out)
    }

    /// The committed watermark snapshot, if any checkpoint carried one.
    pub fn watermarks<T: DeserializeOwned>(&self) -> Result<Option<T>, StateError> {
        match self.get_meta(META_WATERMARKS)? {
            None => Ok(None),
            Some(raw) => postcard::from_bytes(&raw)
                .map(Some)
                .map_err(|e| self.corrupt(CF_META, META_WATERMARKS, e.to_string())),
        }
    }

    /// Every stored key state whose key passes `filter` (e.g. "belongs to my shard"),
    /// in key byte order, for restore.
    pub fn keys<'s, T, F>(
        &'s self,
        filter: F,
    ) -> impl Iterator<Item = Result<(String, T), StateError>> + 's
    where
        T: Persist + 's,
        F: Fn(&str) -> bool + 's,
    {
        self.db
            .iterator_cf(self.cf(CF_KEYS), IteratorMode::Start)
            .filter_map(move |item| {
                let (raw_key, value) = match item {
                    Ok(kv) => kv,
                    Err(e) => return Some(Err(self.rocks("reading key states", e))),
                };
                let key = match keys::decode_state_key(&raw_key) {
                    Ok(k) => k,
                    Err(e) => return Some(Err(self.bad_key(CF_KEYS, &raw_key, e))),
                };
                if !filter(key) {
                    return None;
                }
                Some(
                    self.decode_key(key, &value)
                        .map(|state| (key.to_owned(), state)),
                )
            })
    }

    /// The committed state of one key, if any (a point lookup; the `keys` CF has a bloom
    /// filter, so a miss rarely reads a block).
    pub fn key<T: Persist>(&self, key: &str) -> Result<Option<T>, StateError> {
        let value = self
            .db
            .get_pinned_cf(self.cf(CF_KEYS), keys::state_key(key))
            .map_err(|e| self.rocks("reading a key state", e))?;
        value.map(|v| self.decode_key(key, &v)).transpose()
    }

    /// A key state from its packed head and, for kinds with chunks, its chunks.
    fn decode_key<T: Persist>(&self, key: &str, head: &[u8]) -> Result<T, StateError> {
        let corrupt = |e: String| self.corrupt(CF_KEYS, keys::state_key(key), e);
        let head = unpack(head).map_err(corrupt)?;
        let mut chunks = Vec::new();
        if T::CHUNKED {
            let prefix = keys::chunk_prefix(key);
            let mode = IteratorMode::From(&prefix, rocksdb::Direction::Forward);
            for item in self.db.iterator_cf(self.cf(CF_CHUNKS), mode) {
                let (raw, value) = item.map_err(|e| self.rocks("reading key chunks", e))?;
                if !raw.starts_with(&prefix) {
                    break;
                }
                let (_, id) =
                    keys::decode_chunk_key(&raw).map_err(|e| self.bad_key(CF_CHUNKS, &raw, e))?;
                let bytes = unpack(&value).map_err(|e| self.corrupt(CF_CHUNKS, &raw, e))?;
                chunks.push((id, bytes));
            }
        }
        T::read(&head, &chunks).map_err(corrupt)
    }

    /// The committed, not yet acknowledged output, in (topic, partition, seq) order.
    pub fn outbox(&self) -> impl Iterator<Item = Result<OutboxEntry, StateError>> + '_ {
        let pending = self.pending_output();
        let (entries, error) = match pending {
            Ok(entries) => (entries, None),
            Err(e) => (Vec::new(), Some(e)),
        };
        entries.into_iter().map(Ok).chain(error.map(Err))
    }

    fn pending_output(&self) -> Result<Vec<OutboxEntry>, StateError> {
        let live = self.journals().live.clone();
        let mut out = Vec::new();
        for (n, journal) in &live {
            let entries = if journal.inline {
                let key = keys::inline_key(*n);
                let bytes = self
                    .db
                    .get_pinned_cf(self.cf(CF_OUTBOX), key)
                    .map_err(|e| self.rocks("reading the outbox", e))?
                    .ok_or_else(|| self.corrupt(CF_OUTBOX, &key, "inline journal missing"))?;
                journal::decode(&bytes, &journal.meta)
                    .map_err(|reason| self.corrupt(CF_OUTBOX, &key, reason))?
            } else {
                match journal::read(&self.dir, *n, &journal.meta) {
                    Ok(entries) => entries,
                    // Read-only beside a running job: published and removed since this store
                    // opened.
                    Err(_) if self.read_only && !journal::path(&self.dir, *n).exists() => continue,
                    Err(reason) => {
                        return Err(StateError::CorruptJournal {
                            dir: self.dir.clone(),
                            file: journal::path(&self.dir, *n),
                            reason,
                        });
                    }
                }
            };
            out.extend(entries.into_iter().filter(|e| !journal.is_acked(e)));
        }
        out.sort_by(|a, b| (&a.topic, a.partition, a.seq).cmp(&(&b.topic, b.partition, b.seq)));
        Ok(out)
    }

    /// Acknowledges the published outbox entries of `topic`/`partition` with seq ≤
    /// `up_to_seq` (those committed so far). The acknowledgement itself is not fsynced
    /// (see the module doc); a journal all of whose entries are acknowledged is removed:
    /// its entry and acknowledgements with an fsynced write, then its file.
    pub fn ack_outbox(
        &self,
        topic: &str,
        partition: u32,
        up_to_seq: u64,
    ) -> Result<(), StateError> {
        self.writable("acknowledge output")?;
        let outbox_cf = self.cf(CF_OUTBOX);
        let mut batch = WriteBatch::default();
        let mut done = Vec::new();
        {
            let mut journals = self.journals();
            let part = (topic.to_string(), partition);
            for (n, journal) in journals.live.iter_mut() {
                if !journal
                    .meta
                    .last
                    .iter()
                    .any(|(t, p, _)| t == topic && *p == partition)
                {
                    continue;
                }
                let acked = journal.acked.entry(part.clone()).or_insert(0);
                if up_to_seq <= *acked {
                    continue;
                }
                *acked = up_to_seq;
                if journal.done() {
                    done.push((*n, journal.inline));
                } else {
                    batch.put_cf(
                        outbox_cf,
                        keys::ack_key(*n, topic, partition),
                        up_to_seq.to_be_bytes(),
                    );
                }
            }
            for (n, _) in &done {
                journals.live.remove(n);
            }
        }
        for &(n, inline) in &done {
            batch.delete_cf(outbox_cf, keys::journal_key(n));
            let (from, to) = keys::ack_range(n);
            batch.delete_range_cf(outbox_cf, from, to);
            if inline {
                batch.delete_cf(outbox_cf, keys::inline_key(n));
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        // Only a file's removal must be fsynced first (journal module doc); plain
        // acknowledgements and inline journals' removals need not be.
        if done.iter().all(|&(_, inline)| inline) {
            return self
                .db
                .write(batch)
                .map_err(|e| self.rocks("acknowledging output", e));
        }
        self.write_synced(batch, "acknowledging output")?;
        for (n, _) in done.into_iter().filter(|&(_, inline)| !inline) {
            match std::fs::remove_file(journal::path(&self.dir, n)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(StateError::Io {
                        dir: self.dir.clone(),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Size estimates (cheap: RocksDB properties, no scan).
    pub fn stats(&self) -> StateStats {
        let prop = |cf: &'static str, name: &str| {
            self.db
                .property_int_value_cf(self.cf(cf), name)
                .ok()
                .flatten()
                .unwrap_or(0)
        };
        StateStats {
            live_data_bytes: ALL_CFS
                .iter()
                .map(|cf| prop(cf, "rocksdb.estimate-live-data-size"))
                .sum(),
            memtable_bytes: ALL_CFS
                .iter()
                .map(|cf| prop(cf, "rocksdb.cur-size-all-mem-tables"))
                .sum(),
            keys: prop(CF_KEYS, "rocksdb.estimate-num-keys"),
            outbox: self.journals().live.len() as u64,
            positions: prop(CF_POSITIONS, "rocksdb.estimate-num-keys"),
        }
    }

    /// Flushes memtables and compacts every column family, dropping deleted data now
    /// rather than when RocksDB gets to it (tests, `braid inspect --compact`).
    pub fn compact(&self) -> Result<(), StateError> {
        self.writable("compact")?;
        for name in ALL_CFS {
            let cf = self.cf(name);
            self.db
                .flush_cf(cf)
                .map_err(|e| self.rocks("flushing", e))?;
            self.db.compact_range_cf(cf, None::<&[u8]>, None::<&[u8]>);
        }
        Ok(())
    }

    fn cf(&self, name: &'static str) -> &ColumnFamily {
        // Every CF in ALL_CFS is opened (or the open failed), so this cannot miss.
        self.db
            .cf_handle(name)
            .expect("state store opened with every column family")
    }

    fn write_synced(&self, batch: WriteBatch, action: &'static str) -> Result<(), StateError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(true);
        self.db
            .write_opt(batch, &wo)
            .map_err(|e| self.rocks(action, e))
    }

    fn writable(&self, action: &'static str) -> Result<(), StateError> {
        if self.read_only {
            return Err(StateError::ReadOnly {
                dir: self.dir.clone(),
                action,
            });
        }
        Ok(())
    }

    fn get_meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StateError> {
        self.db
            .get_cf(self.cf(CF_META), key)
            .map_err(|e| self.rocks("reading metadata", e))
    }

    fn check_meta(&self, expected: Option<u128>) -> Result<(), StateError> {
        let version = self.get_meta(META_FORMAT_VERSION)?;
        let version = match version.as_deref().map(<[u8; 4]>::try_from) {
            Some(Ok(bytes)) => u32::from_be_bytes(bytes),
            _ => {
                return Err(StateError::NotAStateStore {
                    dir: self.dir.clone(),
                    reason: "no layout version in its metadata".into(),
                });
            }
        };
        if version == UPGRADES_FROM && !self.read_only {
            // Nothing of the older layout changes meaning in this one, so the new
            // version is recorded before anything of the new layout is written.
            let mut batch = WriteBatch::default();
            batch.put_cf(
                self.cf(CF_META),
                META_FORMAT_VERSION,
                FORMAT_VERSION.to_be_bytes(),
            );
            self.write_synced(batch, "upgrading the layout version")?;
        } else if version != FORMAT_VERSION && version != UPGRADES_FROM {
            return Err(StateError::UnsupportedVersion {
                dir: self.dir.clone(),
                found: version,
                expected: FORMAT_VERSION,
            });
        }
        let stored = self.fingerprint()?;
        if let Some(expected) = expected
            && stored != expected
        {
            return Err(StateError::FingerprintMismatch {
                dir: self.dir.clone(),
                stored,
                expected,
            });
        }
        Ok(())
    }

    fn rocks(&self, action: &'static str, source: rocksdb::Error) -> StateError {
        StateError::Rocks {
            dir: self.dir.clone(),
            action,
            source,
        }
    }

    fn corrupt(&self, cf: &'static str, key: &[u8], reason: impl Into<String>) -> StateError {
        StateError::Corrupt {
            dir: self.dir.clone(),
            cf,
            key: EscapedBytes(key.to_vec()),
            reason: reason.into(),
        }
    }

    fn bad_key(&self, cf: &'static str, key: &[u8], e: KeyError) -> StateError {
        self.corrupt(cf, key, format!("key: {e}"))
    }
}

/// RocksDB reports a held `LOCK` file only in its message text: "lock hold by current
/// process" (same process) or "While lock file: …/LOCK: …" (another process). Matching
/// the file name rather than "lock" keeps "block checksum mismatch" a corruption error.
fn is_lock_error(e: &rocksdb::Error) -> bool {
    let msg = e.to_string();
    e.kind() == rocksdb::ErrorKind::IOError
        && (msg.contains("lock hold by current process") || msg.contains("While lock file"))
}

fn is_empty_or_missing(dir: &Path) -> Result<bool, StateError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => Ok(entries.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(source) => Err(StateError::Io {
            dir: dir.to_path_buf(),
            source,
        }),
    }
}

/// A non-empty directory must be a RocksDB with exactly braid's column families.
fn check_is_state_store(dir: &Path) -> Result<(), StateError> {
    let not = |reason: &str| StateError::NotAStateStore {
        dir: dir.to_path_buf(),
        reason: reason.to_string(),
    };
    if !dir.join("CURRENT").is_file() {
        return Err(not("it is not empty and has no RocksDB CURRENT file"));
    }
    let cfs = DB::list_cf(&Options::default(), dir).map_err(|source| StateError::Rocks {
        dir: dir.to_path_buf(),
        action: "listing column families",
        source,
    })?;
    if let Some(missing) = ALL_CFS.iter().find(|cf| !cfs.iter().any(|c| c == *cf)) {
        return Err(not(&format!("it has no `{missing}` column family")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tempfile::TempDir;

    const FP: u128 = 0x0123_4567_89ab_cdef_0011_2233_4455_6677;

    #[test]
    fn the_write_buffer_budget_bounds_the_memtables() {
        assert_eq!(StateOptions::default().memtable_bytes(), 8 << 20);
        let small = StateOptions {
            block_cache_bytes: 1 << 20,
            write_buffer_bytes: 4 << 20,
            ..StateOptions::default()
        };
        assert_eq!(small.memtable_bytes(), 1 << 20);
        let huge = StateOptions {
            block_cache_bytes: 1 << 20,
            write_buffer_bytes: 1 << 40,
            ..StateOptions::default()
        };
        assert_eq!(huge.memtable_bytes(), 64 << 20);
        // 24 MiB of key states through 1 MiB memtables: RocksDB keeps switching and
        // flushing them instead of holding everything in memory.
        let tmp = TempDir::new().unwrap();
        let store = StateStore::open(&tmp.path().join("s"), FP, small).unwrap();
        let keys: Vec<String> = (0..24 * 256).map(|i| format!("k{i:06}")).collect();
        for batch in keys.chunks(256) {
            let upserts = batch
                .iter()
                .map(|k| (k.as_str(), vec![7u8; 4096]))
                .collect();
            store
                .commit(Checkpoint {
                    upserts,
                    ..Checkpoint::default()
                })
                .unwrap();
        }
        let memtables = store.stats().memtable_bytes;
        assert!(memtables < 8 << 20, "{memtables} bytes in memtables");
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Ks {
        sessions: Vec<(i64, i64)>,
        ids: Vec<u64>,
    }

    /// Every length below the threshold, of bytes LZ4 would compress well, is stored
    /// uncompressed and read back by both decoders; at the threshold LZ4 compresses.
    #[test]
    fn values_below_the_threshold_are_stored_as_literals_every_lz4_decoder_reads() {
        for n in 0..=PACK_LITERAL_BELOW {
            let raw = vec![b'a'; n];
            let packed = pack(&raw);
            if n < PACK_LITERAL_BELOW {
                assert!(
                    packed.len() >= 4 + 1 + n,
                    "{n} bytes packed into {}",
                    packed.len()
                );
            } else {
                assert!(
                    packed.len() < 4 + n / 10,
                    "{n} bytes packed into {}",
                    packed.len()
                );
            }
            assert_eq!(unpack(&packed).unwrap(), raw, "{n} bytes");
            assert_eq!(
                lz4_flex::block::decompress_size_prepended(&packed).unwrap(),
                raw
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn pack_is_lz4_with_the_size_prepended_and_unpacks(raw in proptest::collection::vec(0u8..4, 0..5000)) {
            let packed = pack(&raw);
            if raw.len() >= PACK_LITERAL_BELOW {
                proptest::prop_assert_eq!(&packed, &lz4_flex::block::compress_prepend_size(&raw));
            } else {
                proptest::prop_assert_eq!(packed.len(), 4 + 1 + (raw.len() + 240) / 255 + raw.len());
            }
            proptest::prop_assert_eq!(&lz4_flex::block::decompress_size_prepended(&packed).unwrap(), &raw);
            proptest::prop_assert_eq!(unpack(&packed).unwrap(), raw);
        }

        /// Damaged packed values: whatever the bytes, `unpack` returns what lz4_flex's
        /// safe decoder makes of them, or an error where that fails or disagrees in size.
        #[test]
        fn a_damaged_packed_value_unpacks_as_lz4_flex_decodes_it_or_fails(
            raw in proptest::collection::vec(0u8..6, 0..3000),
            flips in proptest::collection::vec((proptest::num::usize::ANY, proptest::num::u8::ANY), 0..4),
            cut in proptest::num::usize::ANY,
        ) {
            let mut packed = pack(&raw);
            for (at, byte) in flips {
                let at = at % packed.len();
                packed[at] = byte;
            }
            packed.truncate(4 + cut % (packed.len() - 3));
            let mut out = b"kept".to_vec();
            let got = unpack_into(&packed, &mut out, 8);
            let size = u32::from_le_bytes(packed[..4].try_into().unwrap()) as usize;
            // Beyond this size `unpack` refuses the value before decoding it.
            let plausible = size <= max_unpacked_size(packed.len() - 4);
            let mut reference = vec![0; if plausible { size } else { 0 }];
            let expected = if plausible {
                lz4_flex::block::decompress_into(&packed[4..], &mut reference)
            } else {
                Err(lz4_flex::block::DecompressError::OutputTooSmall { expected: size, actual: 0 })
            };
            match (got, expected) {
                (Ok(()), Ok(n)) => {
                    proptest::prop_assert_eq!(n, size);
                    proptest::prop_assert_eq!(&out[4..], &reference[..n]);
                }
                (Err(_), Ok(n)) => {
                    proptest::prop_assert_ne!(n, size);
                    proptest::prop_assert_eq!(&out, b"kept");
                }
                (Ok(()), Err(e)) => proptest::prop_assert!(false, "unpacked what lz4_flex refuses: {e}"),
                (Err(_), Err(_)) => proptest::prop_assert_eq!(&out, b"kept"),
            }
        }
    }

    impl StoredWhole for Ks {}
    impl StoredWhole for u8 {}
    impl StoredWhole for Vec<u64> {}

    /// A kind with chunks, read back as raw bytes.
    #[derive(Debug, PartialEq)]
    struct Chunky {
        head: Vec<u8>,
        chunks: Vec<(u32, Vec<u8>)>,
    }

    impl Persist for Chunky {
        const CHUNKED: bool = true;

        fn write(&mut self, w: &mut StateWriter<'_>) -> Result<(), StateError> {
            w.head(&self.head)
        }

        fn read(head: &[u8], chunks: &[(u32, Vec<u8>)]) -> Result<Self, String> {
            Ok(Chunky {
                head: head.to_vec(),
                chunks: chunks.to_vec(),
            })
        }
    }

    #[test]
    fn chunks_are_read_back_with_their_key_only_and_deleted_one_by_one() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        let chunk = |key: &str, id: u32, v: &str| (key.to_string(), id, pack(v.as_bytes()));
        // "a" is a prefix of "ab" and "a\0": their chunks must not mix.
        let chunks = [
            chunk("ab", 0, "ab0"),
            chunk("a", 2, "a2"),
            chunk("a", 1, "a1"),
            chunk("a\u{0}", 0, "a-nul"),
        ];
        store
            .commit(Checkpoint {
                upserts: ["a", "ab", "a\u{0}"]
                    .map(|k| (k, pack(k.as_bytes())))
                    .to_vec(),
                chunks: chunks.to_vec(),
                ..Checkpoint::default()
            })
            .unwrap();
        let a: Chunky = store.key("a").unwrap().unwrap();
        assert_eq!(a.head, b"a");
        assert_eq!(a.chunks, vec![(1, b"a1".to_vec()), (2, b"a2".to_vec())]);
        let deletes = [("a".to_string(), 1)];
        store
            .commit(Checkpoint {
                chunk_deletes: &deletes,
                ..Checkpoint::default()
            })
            .unwrap();
        let all: Vec<(String, Chunky)> = store.keys(|_| true).map(Result::unwrap).collect();
        let got: Vec<(&str, Vec<u32>)> = all
            .iter()
            .map(|(k, c)| (k.as_str(), c.chunks.iter().map(|(id, _)| *id).collect()))
            .collect();
        assert_eq!(
            got,
            vec![("a", vec![2]), ("a\u{0}", vec![0]), ("ab", vec![0])]
        );
    }

    fn ks(n: i64) -> Ks {
        Ks {
            sessions: vec![(n, n + 10)],
            ids: vec![n as u64, 7],
        }
    }

    fn entry(topic: &str, partition: u32, seq: u64) -> OutboxEntry {
        OutboxEntry {
            topic: topic.into(),
            partition,
            seq,
            key: seq
                .is_multiple_of(2)
                .then(|| format!("k{seq}").into_bytes()),
            stored: format!("v{seq}").into_bytes(),
        }
    }

    fn store_dir() -> (TempDir, PathBuf) {
        let tmp = TempDir::new().unwrap();
        let dir = tmp.path().join("state");
        (tmp, dir)
    }

    fn all_keys(store: &StateStore) -> Vec<(String, Ks)> {
        store.keys(|_| true).collect::<Result<_, _>>().unwrap()
    }

    fn all_outbox(store: &StateStore) -> Vec<OutboxEntry> {
        store.outbox().collect::<Result<_, _>>().unwrap()
    }

    #[test]
    fn commit_then_reopen_restores_everything() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        assert_eq!(store.watermarks::<Vec<i64>>().unwrap(), None);
        let cp = Checkpoint {
            upserts: vec![
                ("alice", encode_packed("ks", &ks(1)).unwrap()),
                ("bob\u{0}\u{ff}", encode_packed("ks", &ks(2)).unwrap()),
                ("carol", encode_packed("ks", &ks(3)).unwrap()),
            ],
            deletes: vec![],
            positions: vec![
                ("page.viewed", 0, 42),
                ("page.viewed", 1, 7),
                ("orders", 3, 1 << 40),
            ],
            watermarks: Some(encode("wm", &vec![5i64, -3]).unwrap()),
            outbox: &[entry("out", 0, 1), entry("out", 0, 2)],
            ..Checkpoint::default()
        };
        let stats = store.commit(cp).unwrap();
        assert_eq!((stats.upserts, stats.positions, stats.outbox), (3, 3, 2));
        store
            .commit(Checkpoint {
                deletes: vec!["carol"],
                upserts: vec![("alice", encode_packed("ks", &ks(10)).unwrap())],
                positions: vec![("page.viewed", 0, 50)],
                ..Checkpoint::default()
            })
            .unwrap();
        drop(store);

        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        assert_eq!(
            all_keys(&store),
            vec![
                ("alice".to_string(), ks(10)),
                ("bob\u{0}\u{ff}".to_string(), ks(2))
            ]
        );
        let positions: Vec<_> = store.positions().unwrap().into_iter().collect();
        assert_eq!(
            positions,
            vec![
                (("orders".to_string(), 3), 1 << 40),
                (("page.viewed".to_string(), 0), 50),
                (("page.viewed".to_string(), 1), 7),
            ]
        );
        assert_eq!(store.watermarks::<Vec<i64>>().unwrap(), Some(vec![5, -3]));
        assert_eq!(
            all_outbox(&store),
            vec![entry("out", 0, 1), entry("out", 0, 2)]
        );
        assert_eq!(store.fingerprint().unwrap(), FP);
    }

    /// The real payloads: the session operator's `KeyState` and the watermark snapshot
    /// survive postcard through the store unchanged.
    #[test]
    fn operator_state_and_watermarks_round_trip() {
        use crate::engine::session::{EmittedSession, KeyState, OpenSession};
        use crate::engine::{JourneyId, RecordEvent};
        use crate::time::{PartitionId, PartitionSnapshot, WatermarkSnapshot};

        let event = RecordEvent::new(
            2,
            7,
            u64::MAX,
            -5,
            Some("e\u{0}1".into()),
            r#"{"a":[1,2]}"#.into(),
        );
        let mut open = OpenSession::new(-5, event);
        open.last = 1_700_000_000_000;
        open.dropped = 7;
        let mut state = KeyState {
            open: vec![open],
            emitted: vec![EmittedSession {
                first: 1,
                last: 2,
                id: JourneyId(u128::MAX - 1),
                forget_after: i64::MAX,
                fingerprints: vec![3, u128::MAX],
            }],
            ..KeyState::default()
        };
        let mut writes = KeyWrites::default();
        state
            .write(&mut StateWriter::new("k", &mut writes, &mut Vec::new()))
            .unwrap();
        // The event went into chunk 0; `seen` is not stored, and a key with three ids
        // (one open event's, two remembered) finds duplicates by a scan: none is built.
        assert_eq!(
            (state.chunks.as_slice(), state.open[0].stored),
            (&[0][..], 1)
        );
        let read = KeyState::read(
            &unpack(&writes.heads[0].1).unwrap(),
            &[(0, unpack(&writes.chunks[0].2).unwrap())],
        )
        .unwrap();
        assert_eq!(read, state);
        assert_eq!(read.seen, None);
        let wm = WatermarkSnapshot {
            job: i64::MIN,
            partitions: vec![PartitionSnapshot {
                id: PartitionId {
                    source: 1,
                    partition: 3,
                },
                watermark: 99,
                max_event_time: None,
            }],
        };
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        store
            .commit(Checkpoint {
                upserts: vec![("k", writes.heads[0].1.clone())],
                chunks: writes.chunks.clone(),
                watermarks: Some(encode("watermarks", &wm).unwrap()),
                ..Checkpoint::default()
            })
            .unwrap();
        drop(store);
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        let restored: Vec<(String, KeyState)> =
            store.keys(|_| true).collect::<Result<_, _>>().unwrap();
        assert_eq!(restored, vec![("k".to_string(), state)]);
        assert_eq!(store.watermarks::<WatermarkSnapshot>().unwrap(), Some(wm));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Upsert(u8, u8),
        Delete(u8),
        Emit(u8),
        Ack(u8, u64),
        Reopen,
    }

    fn op_strategy() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            4 => (0..6u8, any::<u8>()).prop_map(|(k, v)| Op::Upsert(k, v)),
            2 => (0..6u8).prop_map(Op::Delete),
            3 => (0..2u8).prop_map(Op::Emit),
            2 => (0..2u8, 0..12u64).prop_map(|(p, s)| Op::Ack(p, s)),
            1 => Just(Op::Reopen),
        ]
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]

        /// Random checkpoints (each op is one commit), acks and reopens against a
        /// BTreeMap model of keys and outbox.
        #[test]
        fn store_matches_a_simple_model(ops in proptest::collection::vec(op_strategy(), 1..40)) {
            let (_tmp, dir) = store_dir();
            let mut store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
            let mut keys_model: BTreeMap<String, u8> = BTreeMap::new();
            let mut outbox_model: BTreeMap<(u32, u64), ()> = BTreeMap::new();
            let mut next_seq = [1u64, 1];
            for op in ops {
                match op {
                    Op::Upsert(k, v) => {
                        let name = format!("k{k}");
                        store.commit(Checkpoint {
                            upserts: vec![(&name, encode_packed("v", &v).unwrap())],
                            ..Checkpoint::default()
                        }).unwrap();
                        keys_model.insert(name, v);
                    }
                    Op::Delete(k) => {
                        let name = format!("k{k}");
                        store.commit(Checkpoint { deletes: vec![&name], ..Checkpoint::default() }).unwrap();
                        keys_model.remove(&name);
                    }
                    Op::Emit(p) => {
                        let seq = next_seq[p as usize];
                        next_seq[p as usize] += 1;
                        store.commit(Checkpoint {
                            outbox: &[entry("out", u32::from(p), seq)],
                            ..Checkpoint::default()
                        }).unwrap();
                        outbox_model.insert((u32::from(p), seq), ());
                    }
                    Op::Ack(p, up_to) => {
                        store.ack_outbox("out", u32::from(p), up_to).unwrap();
                        outbox_model.retain(|&(mp, s), _| mp != u32::from(p) || s > up_to);
                    }
                    Op::Reopen => {
                        drop(store);
                        store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
                    }
                }
                let got: Vec<(String, u8)> = store.keys(|_| true).collect::<Result<_, _>>().unwrap();
                let want: Vec<(String, u8)> = keys_model.clone().into_iter().collect();
                proptest::prop_assert_eq!(got, want);
                let got: Vec<OutboxEntry> = all_outbox(&store);
                let want: Vec<OutboxEntry> =
                    outbox_model.keys().map(|&(p, s)| entry("out", p, s)).collect();
                proptest::prop_assert_eq!(got, want);
            }
        }
    }

    #[test]
    fn shard_filter_selects_keys() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        let names: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
        store
            .commit(Checkpoint {
                upserts: names
                    .iter()
                    .enumerate()
                    .map(|(i, k)| (k.as_str(), encode_packed("ks", &ks(i as i64)).unwrap()))
                    .collect(),
                ..Checkpoint::default()
            })
            .unwrap();
        let odd: Vec<String> = store
            .keys::<Ks, _>(|k| k.ends_with(['1', '3', '5', '7', '9']))
            .map(|r| r.unwrap().0)
            .collect();
        assert_eq!(odd, vec!["k1", "k3", "k5", "k7", "k9"]);
    }

    /// Every checkpoint i writes key `k{i}`, position i, watermark i and outbox seq i:
    /// whatever is observed through the API after a commit or a reopen must be one whole
    /// checkpoint — all four column families agree on i.
    #[test]
    fn commits_are_all_or_nothing_across_column_families() {
        let (_tmp, dir) = store_dir();
        let check = |store: &StateStore, n: u64| {
            let keys = all_keys(store);
            assert_eq!(keys.len() as u64, n);
            let positions = store.positions().unwrap();
            assert_eq!(
                positions.get(&("src".to_string(), 0)).copied(),
                (n > 0).then_some(n)
            );
            assert_eq!(store.watermarks::<u64>().unwrap(), (n > 0).then_some(n));
            let seqs: Vec<u64> = all_outbox(store).iter().map(|e| e.seq).collect();
            assert_eq!(seqs, (1..=n).collect::<Vec<_>>());
        };
        for round in 0..3u64 {
            let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
            check(&store, round * 5);
            for i in round * 5 + 1..=round * 5 + 5 {
                let name = format!("k{i:03}");
                store
                    .commit(Checkpoint {
                        upserts: vec![(&name, encode_packed("ks", &ks(i as i64)).unwrap())],
                        positions: vec![("src", 0, i)],
                        watermarks: Some(encode("wm", &i).unwrap()),
                        outbox: &[entry("out", 0, i)],
                        ..Checkpoint::default()
                    })
                    .unwrap();
                check(&store, i);
            }
        }
    }

    #[test]
    fn a_failing_commit_writes_nothing() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        drop(store);
        let ro = StateStore::open_read_only(&dir).unwrap();
        let err = ro
            .commit(Checkpoint {
                upserts: vec![("a", vec![1])],
                ..Checkpoint::default()
            })
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {} is open read-only; cannot commit a checkpoint",
                dir.display()
            )
        );
        drop(ro);
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        assert!(all_keys(&store).is_empty());
    }

    #[test]
    fn outbox_iterates_in_seq_order_and_ack_is_scoped() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        let seqs = [
            1u64,
            2,
            255,
            256,
            257,
            65_536,
            1 << 32,
            (1 << 32) + 1,
            u64::MAX,
        ];
        // Committed out of order, across partitions and a topic that is a prefix of another.
        let mut entries = Vec::new();
        for &seq in seqs.iter().rev() {
            for (topic, partition) in [("out", 1), ("out", 0), ("out.late", 0)] {
                entries.push(entry(topic, partition, seq));
            }
        }
        store
            .commit(Checkpoint {
                outbox: &entries,
                ..Checkpoint::default()
            })
            .unwrap();
        let got = all_outbox(&store);
        let mut expected = Vec::new();
        for (topic, partition) in [("out", 0), ("out", 1), ("out.late", 0)] {
            for &seq in &seqs {
                expected.push(entry(topic, partition, seq));
            }
        }
        assert_eq!(got, expected);

        store.ack_outbox("out", 0, 1 << 32).unwrap();
        let left: Vec<(String, u32, u64)> = all_outbox(&store)
            .into_iter()
            .map(|e| (e.topic, e.partition, e.seq))
            .collect();
        let mut expected: Vec<(String, u32, u64)> = [(1u64 << 32) + 1, u64::MAX]
            .iter()
            .map(|&s| ("out".to_string(), 0, s))
            .collect();
        for (topic, partition) in [("out", 1), ("out.late", 0)] {
            expected.extend(seqs.iter().map(|&s| (topic.to_string(), partition, s)));
        }
        assert_eq!(left, expected);

        store.ack_outbox("out", 0, u64::MAX).unwrap();
        store.ack_outbox("nothing", 9, 5).unwrap();
        assert_eq!(all_outbox(&store).len(), 2 * seqs.len());
    }

    #[test]
    fn fingerprint_mismatch_is_refused() {
        let (_tmp, dir) = store_dir();
        drop(StateStore::open(&dir, FP, StateOptions::default()).unwrap());
        let err = StateStore::open(&dir, 0xff, StateOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {} was written for plan fingerprint 0123456789abcdef0011223344556677, but this plan has fingerprint 000000000000000000000000000000ff; the topology changed in a way the state cannot follow: replay into a new state directory",
                dir.display()
            )
        );
    }

    #[test]
    fn second_open_is_locked_but_read_only_works_alongside() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        store
            .commit(Checkpoint {
                upserts: vec![("alice", encode_packed("ks", &ks(1)).unwrap())],
                positions: vec![("src", 0, 9)],
                ..Checkpoint::default()
            })
            .unwrap();
        let err = StateStore::open(&dir, FP, StateOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {} is locked by another open store (another `braid run` on the same state?)",
                dir.display()
            )
        );
        let ro = StateStore::open_read_only(&dir).unwrap();
        assert_eq!(all_keys(&ro), vec![("alice".to_string(), ks(1))]);
        assert_eq!(ro.positions().unwrap().len(), 1);
        assert_eq!(ro.fingerprint().unwrap(), FP);
    }

    #[test]
    fn a_foreign_directory_is_refused() {
        let tmp = TempDir::new().unwrap();
        std::fs::write(tmp.path().join("notes.txt"), "hello").unwrap();
        let err = StateStore::open(tmp.path(), FP, StateOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {} is not a braid state store (it is not empty and has no RocksDB CURRENT file); refusing to use it",
                tmp.path().display()
            )
        );
        // A RocksDB of someone else: no braid column families.
        let other = tmp.path().join("other");
        let mut opts = Options::default();
        opts.create_if_missing(true);
        drop(DB::open(&opts, &other).unwrap());
        let err = StateStore::open(&other, FP, StateOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {} is not a braid state store (it has no `meta` column family); refusing to use it",
                other.display()
            )
        );
        let err = StateStore::open_read_only(&tmp.path().join("missing")).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {} is not a braid state store (it is empty or missing); refusing to use it",
                tmp.path().join("missing").display()
            )
        );
    }

    #[test]
    fn a_damaged_store_is_an_error_not_a_fresh_start() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        store
            .commit(Checkpoint {
                positions: vec![("src", 0, 5)],
                ..Checkpoint::default()
            })
            .unwrap();
        drop(store);
        std::fs::write(dir.join("CURRENT"), "MANIFEST-999999\n").unwrap();
        let err = StateStore::open(&dir, FP, StateOptions::default()).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {}: RocksDB error while listing column families",
                dir.display()
            )
        );
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            cause.is_some_and(|c| c.contains("MANIFEST-999999")),
            "{err:?}"
        );
        assert!(matches!(err, StateError::Rocks { .. }));
        // The damaged directory was left as it was.
        assert_eq!(
            std::fs::read_to_string(dir.join("CURRENT")).unwrap(),
            "MANIFEST-999999\n"
        );
    }

    #[test]
    fn corrupt_values_are_errors_naming_the_entry() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        store
            .commit(Checkpoint {
                upserts: vec![("a\u{1}", vec![0xff, 0xff])],
                ..Checkpoint::default()
            })
            .unwrap();
        let err = store.keys::<Ks, _>(|_| true).next().unwrap().unwrap_err();
        let msg = err.to_string();
        let prefix = format!(
            "state directory {}: corrupt entry in column family `keys` at key \"a\\x01\": ",
            dir.display()
        );
        assert!(msg.starts_with(&prefix), "{msg}");
    }

    #[test]
    fn state_leaves_the_store_when_keys_are_deleted() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        let names: Vec<String> = (0..20_000).map(|i| format!("customer-{i:06}")).collect();
        let payload = encode("ks", &(0..40u64).collect::<Vec<_>>()).unwrap();
        for chunk in names.chunks(5_000) {
            store
                .commit(Checkpoint {
                    upserts: chunk
                        .iter()
                        .map(|k| (k.as_str(), payload.clone()))
                        .collect(),
                    ..Checkpoint::default()
                })
                .unwrap();
        }
        store.compact().unwrap();
        let full = store.stats();
        assert!(full.live_data_bytes > 100_000, "{full:?}");
        assert!(full.keys > 10_000, "{full:?}");

        for chunk in names.chunks(5_000) {
            store
                .commit(Checkpoint {
                    deletes: chunk.iter().map(String::as_str).collect(),
                    ..Checkpoint::default()
                })
                .unwrap();
        }
        store.compact().unwrap();
        let empty = store.stats();
        assert_eq!(store.keys::<Vec<u64>, _>(|_| true).count(), 0);
        assert_eq!(empty.keys, 0, "{empty:?}");
        assert!(empty.live_data_bytes < 4_096, "{empty:?}");
    }

    fn journal_files(dir: &Path) -> Vec<u64> {
        journal::list(dir).unwrap()
    }

    /// Every checkpoint's output to a journal file, however small.
    fn files() -> StateOptions {
        StateOptions {
            inline_journal_bytes: 0,
            ..StateOptions::default()
        }
    }

    /// Commits a checkpoint of nothing but `outbox`.
    fn emit(store: &StateStore, outbox: &[OutboxEntry]) {
        store
            .commit(Checkpoint {
                outbox,
                ..Checkpoint::default()
            })
            .unwrap();
    }

    #[test]
    fn a_journal_lives_until_every_partition_in_it_is_acknowledged() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, files()).unwrap();
        let first = [entry("a", 0, 1), entry("a", 0, 2), entry("b", 1, 1)];
        emit(&store, &first);
        emit(&store, &[entry("a", 0, 3)]);
        assert_eq!(journal_files(&dir), vec![1, 2]);
        assert_eq!(store.stats().outbox, 2);
        store.ack_outbox("a", 0, 3).unwrap();
        // Journal 2 is wholly acknowledged, journal 1 still holds b/1.
        assert_eq!(journal_files(&dir), vec![1]);
        assert_eq!(all_outbox(&store), vec![entry("b", 1, 1)]);
        // Across a reopen the acknowledgements hold and numbering goes on.
        drop(store);
        let store = StateStore::open(&dir, FP, files()).unwrap();
        assert_eq!(all_outbox(&store), vec![entry("b", 1, 1)]);
        store.ack_outbox("b", 1, 1).unwrap();
        assert!(journal_files(&dir).is_empty());
        assert_eq!(store.stats().outbox, 0);
        emit(&store, &[entry("a", 0, 4)]);
        assert_eq!(journal_files(&dir), vec![3]);
        assert_eq!(all_outbox(&store), vec![entry("a", 0, 4)]);
    }

    #[test]
    fn a_journal_no_checkpoint_names_is_deleted_on_open_and_never_read() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, files()).unwrap();
        emit(&store, &[entry("a", 0, 1)]);
        // What a crash between a journal's write and its batch's leaves behind.
        let leftover = entry("a", 0, 2);
        journal::write(&dir, 2, &[&leftover]).unwrap();
        assert_eq!(all_outbox(&store), vec![entry("a", 0, 1)]);
        drop(store);
        let ro = StateStore::open_read_only(&dir).unwrap();
        assert_eq!(all_outbox(&ro), vec![entry("a", 0, 1)]);
        assert_eq!(journal_files(&dir), vec![1, 2], "a reader deletes nothing");
        drop(ro);
        let store = StateStore::open(&dir, FP, files()).unwrap();
        assert_eq!(journal_files(&dir), vec![1]);
        emit(&store, &[entry("a", 0, 2)]);
        // The leftover's number is not reused either.
        assert_eq!(journal_files(&dir), vec![1, 3]);
        assert_eq!(all_outbox(&store), vec![entry("a", 0, 1), entry("a", 0, 2)]);
    }

    #[test]
    fn a_damaged_journal_is_an_error_naming_it() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, files()).unwrap();
        emit(&store, &[entry("a", 0, 1), entry("a", 0, 2)]);
        let file = journal::path(&dir, 1);
        let data = std::fs::read(&file).unwrap();
        std::fs::write(&file, &data[..data.len() - 1]).unwrap();
        let err = store.outbox().find_map(Result::err).unwrap();
        assert_eq!(
            err.to_string(),
            format!(
                "state directory {}: outbox journal {} is corrupt ({} bytes, its checkpoint wrote {}); restore the state directory or replay into a new one",
                dir.display(),
                file.display(),
                data.len() - 1,
                data.len()
            )
        );
        std::fs::remove_file(&file).unwrap();
        let err = store.outbox().find_map(Result::err).unwrap();
        assert!(
            err.to_string().contains("No such file or directory"),
            "a missing journal is an error for the writer: {err}"
        );
    }

    #[test]
    fn a_reader_skips_journals_published_and_removed_since_it_opened() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, files()).unwrap();
        emit(&store, &[entry("a", 0, 1)]);
        emit(&store, &[entry("a", 0, 2)]);
        let ro = StateStore::open_read_only(&dir).unwrap();
        store.ack_outbox("a", 0, 1).unwrap();
        assert_eq!(all_outbox(&ro), vec![entry("a", 0, 2)]);
    }

    #[test]
    fn a_small_output_is_journaled_inline_and_a_large_one_in_a_file() {
        let (_tmp, dir) = store_dir();
        let opts = StateOptions {
            inline_journal_bytes: 100,
            ..StateOptions::default()
        };
        let store = StateStore::open(&dir, FP, opts).unwrap();
        let large: Vec<OutboxEntry> = (1..=10).map(|seq| entry("a", 0, seq)).collect();
        emit(&store, &[entry("b", 0, 1)]);
        emit(&store, &large);
        emit(&store, &[entry("a", 0, 11), entry("b", 0, 2)]);
        assert_eq!(
            journal_files(&dir),
            vec![2],
            "only the large output has a file"
        );
        assert_eq!(store.stats().outbox, 3);
        let mut all = large.clone();
        all.extend([entry("a", 0, 11), entry("b", 0, 1), entry("b", 0, 2)]);
        assert_eq!(all_outbox(&store), all);
        // A reader sees inline journals as they were when it opened.
        let ro = StateStore::open_read_only(&dir).unwrap();
        store.ack_outbox("b", 0, 1).unwrap();
        assert_eq!(all_outbox(&ro), all);
        drop(ro);
        store.ack_outbox("a", 0, 11).unwrap();
        assert!(journal_files(&dir).is_empty());
        assert_eq!(store.stats().outbox, 1, "journal 3 still holds b/2");
        // Removed inline journals stay removed across a reopen, and their bytes too.
        drop(store);
        let store = StateStore::open(&dir, FP, opts).unwrap();
        assert_eq!(all_outbox(&store), vec![entry("b", 0, 2)]);
        store.ack_outbox("b", 0, 2).unwrap();
        assert_eq!(store.stats().outbox, 0);
        let outbox_cf = store.cf(CF_OUTBOX);
        assert_eq!(
            store.db.iterator_cf(outbox_cf, IteratorMode::Start).count(),
            0
        );
    }

    #[test]
    fn a_damaged_inline_journal_is_an_error_naming_its_entry() {
        let (_tmp, dir) = store_dir();
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        emit(&store, &[entry("a", 0, 1), entry("a", 0, 2)]);
        let key = keys::inline_key(1);
        let outbox_cf = store.cf(CF_OUTBOX);
        let mut bytes = store.db.get_cf(outbox_cf, key).unwrap().unwrap();
        let written = bytes.len();
        bytes.pop();
        store.db.put_cf(outbox_cf, key, &bytes).unwrap();
        let at_key = format!(
            "state directory {}: corrupt entry in column family `outbox` at key \"i\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x01\"",
            dir.display()
        );
        let error = || store.outbox().find_map(Result::err).unwrap().to_string();
        assert_eq!(
            error(),
            format!(
                "{at_key}: {} bytes, its checkpoint wrote {written}",
                written - 1
            )
        );
        store.db.delete_cf(outbox_cf, key).unwrap();
        assert_eq!(error(), format!("{at_key}: inline journal missing"));
    }

    #[test]
    fn a_store_of_the_previous_layout_is_upgraded_and_an_older_one_refused() {
        let (_tmp, dir) = store_dir();
        let set_version = |v: u32| {
            let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
            let meta = store.cf(CF_META);
            store
                .db
                .put_cf(meta, META_FORMAT_VERSION, v.to_be_bytes())
                .unwrap();
        };
        let version = |store: &StateStore| store.get_meta(META_FORMAT_VERSION).unwrap().unwrap();
        set_version(UPGRADES_FROM);
        let ro = StateStore::open_read_only(&dir).unwrap();
        assert_eq!(
            version(&ro),
            UPGRADES_FROM.to_be_bytes(),
            "a reader changes nothing"
        );
        drop(ro);
        let store = StateStore::open(&dir, FP, StateOptions::default()).unwrap();
        assert_eq!(version(&store), FORMAT_VERSION.to_be_bytes());
        drop(store);
        set_version(UPGRADES_FROM - 1);
        assert_eq!(
            StateStore::open(&dir, FP, StateOptions::default())
                .unwrap_err()
                .to_string(),
            format!(
                "state directory {} has layout version 4, this braid reads version 6",
                dir.display()
            )
        );
    }
}
