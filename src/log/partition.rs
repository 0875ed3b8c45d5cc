//! One partition: its single writer, its readers, and the questions asked of it (end offset,
//! first offset at a time).
//!
//! Invariants:
//! - offsets are dense, starting at 0; record `n` of a segment based at `b` has offset `b + n`;
//! - append timestamps never decrease (the writer clamps its clock to the last timestamp);
//! - only the last segment is ever appended to; a segment is fsynced before the next one is
//!   created, so a crash can only tear the tail of the last segment, which the writer
//!   validates and truncates on open;
//! - one writer per partition, enforced by an OS lock on `writer.lock`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use super::LogError;
use super::record::{self, Record};
use super::segment::{self, IndexEntry, Next, SegmentCursor};
use super::tail::TailSignal;

/// When appended data is forced to stable storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsyncPolicy {
    /// `fdatasync` after every appended batch (default): an acknowledged batch survives power loss.
    #[default]
    EveryBatch,
    /// At most once per interval: a power loss may lose the last interval, a process crash nothing.
    Interval(Duration),
    /// Never explicitly: the OS decides (process crashes lose nothing, power loss may).
    Never,
}

/// Tuning of a partition writer.
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// A new segment starts once the active one reaches this size.
    pub segment_bytes: u64,
    /// Bytes of frames between two index entries.
    pub index_interval_bytes: u64,
    pub fsync: FsyncPolicy,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions {
            segment_bytes: 64 * 1024 * 1024,
            index_interval_bytes: 4096,
            fsync: FsyncPolicy::EveryBatch,
        }
    }
}

/// Identifies a partition in errors.
#[derive(Debug, Clone)]
pub(crate) struct PartitionRef {
    pub topic: String,
    pub partition: u32,
    pub dir: PathBuf,
}

impl PartitionRef {
    /// A record of `size` value bytes this partition cannot hold.
    fn too_large(&self, size: usize) -> LogError {
        LogError::RecordTooLarge {
            topic: self.topic.clone(),
            partition: self.partition,
            size,
            max: record::MAX_BODY_BYTES,
        }
    }

    /// Wraps an I/O error on `path`. Lazy: the topic and path are copied only when an error
    /// actually happens, because readers call this once per record (`peek().map_err(..)`).
    fn io<'a>(&'a self, path: &'a Path) -> impl FnOnce(std::io::Error) -> LogError + 'a {
        move |source| {
            if segment::is_symlink_error(&source) {
                return LogError::Symlink {
                    path: path.to_path_buf(),
                };
            }
            LogError::PartitionIo {
                topic: self.topic.clone(),
                partition: self.partition,
                path: path.to_path_buf(),
                source,
            }
        }
    }
}

/// Frame bytes buffered before a write system call within one append.
const WRITE_CHUNK_BYTES: usize = 1 << 20;

/// The single writer of a partition.
pub struct PartitionWriter {
    part: PartitionRef,
    opts: WriterOptions,
    _lock: File,
    base: u64,
    log: File,
    index: File,
    size: u64,
    next_offset: u64,
    last_timestamp: i64,
    /// Frame bytes since the last index entry.
    since_index: u64,
    frames: Vec<u8>,
    index_buf: Vec<u8>,
    last_sync: Instant,
}

impl PartitionWriter {
    pub(crate) fn open(part: PartitionRef, opts: WriterOptions) -> Result<Self, LogError> {
        let lock_path = part.dir.join("writer.lock");
        let lock = segment::no_follow(&mut OpenOptions::new())
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(part.io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(LogError::WriterLocked {
                    topic: part.topic,
                    partition: part.partition,
                    path: lock_path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(part.io(&lock_path)(e)),
        }
        let bases = segment::list(&part.dir).map_err(part.io(&part.dir))?;
        let base = bases.last().copied().unwrap_or(0);
        let recovered = recover_segment(&part, base)?;
        let log_path = segment::log_path(&part.dir, base);
        let log = segment::no_follow(&mut OpenOptions::new())
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(part.io(&log_path))?;
        if recovered.truncated_bytes > 0 {
            log.set_len(recovered.valid_len)
                .and_then(|()| log.sync_data())
                .map_err(part.io(&log_path))?;
            tracing::warn!(
                topic = %part.topic,
                partition = part.partition,
                segment = %log_path.display(),
                position = recovered.valid_len,
                bytes = recovered.truncated_bytes,
                reason = recovered.reason,
                "truncated a torn tail left by a crash"
            );
        }
        let index_path = segment::index_path(&part.dir, base);
        let mut index = segment::no_follow(&mut OpenOptions::new())
            .create(true)
            .write(true)
            .truncate(true)
            .open(&index_path)
            .map_err(part.io(&index_path))?;
        let mut index_bytes = Vec::new();
        for e in &recovered.index {
            e.encode(base, &mut index_bytes);
        }
        index
            .write_all(&index_bytes)
            .map_err(part.io(&index_path))?;
        let last_timestamp = match recovered.last_timestamp {
            Some(ts) => ts,
            None => last_timestamp_before(&part, &bases, base)?,
        };
        Ok(PartitionWriter {
            opts,
            _lock: lock,
            base,
            log,
            index,
            size: recovered.valid_len,
            next_offset: recovered.next_offset,
            last_timestamp,
            since_index: recovered.since_index,
            frames: Vec::new(),
            index_buf: Vec::new(),
            last_sync: Instant::now(),
            part,
        })
    }

    /// Offset the next appended record gets.
    pub fn next_offset(&self) -> u64 {
        self.next_offset
    }

    /// Appends records stamped with the wall clock; returns the offsets they got.
    pub fn append<'a, I>(&mut self, records: I) -> Result<std::ops::Range<u64>, LogError>
    where
        I: IntoIterator<Item = (Option<&'a [u8]>, &'a [u8])>,
    {
        self.append_at(records, crate::time::wall_clock_ms())
    }

    /// Appends records with one append time for the whole batch.
    pub fn append_at<'a, I>(
        &mut self,
        records: I,
        timestamp_ms: i64,
    ) -> Result<std::ops::Range<u64>, LogError>
    where
        I: IntoIterator<Item = (Option<&'a [u8]>, &'a [u8])>,
    {
        self.append_timed(records.into_iter().map(|(k, v)| (k, v, timestamp_ms)))
    }

    /// Appends records, each with its own append time (clamped so time never goes back).
    /// The batch is written with one system call per MiB of frames and per segment it
    /// touches (a crash can thus leave a prefix of it, whole frames, plus a torn tail that
    /// the next open truncates), then synced per the
    /// [`FsyncPolicy`].
    pub fn append_timed<'a, I>(&mut self, records: I) -> Result<std::ops::Range<u64>, LogError>
    where
        I: IntoIterator<Item = (Option<&'a [u8]>, &'a [u8], i64)>,
    {
        let part = &self.part.clone();
        // An oversized value is refused before it is copied into a frame.
        self.append_with(records.into_iter().map(|(key, value, ts)| {
            let write = move |out: &mut Vec<u8>| {
                if record::frame_len(key, value) - record::FRAME_HEADER > record::MAX_BODY_BYTES {
                    return Err(part.too_large(value.len()));
                }
                out.extend_from_slice(value);
                Ok(())
            };
            (key, ts, write)
        }))?
    }

    /// [`PartitionWriter::append_timed`] of values that each write themselves into their
    /// frame ([`record::encode_with`]). When a value's writer fails, the records before
    /// it are appended and synced as a whole batch would be, and its error is returned
    /// inside `Ok`; the failed record and those after it are not appended.
    pub fn append_with<'a, I, W, E>(
        &mut self,
        records: I,
    ) -> Result<Result<std::ops::Range<u64>, E>, LogError>
    where
        I: IntoIterator<Item = (Option<&'a [u8]>, i64, W)>,
        W: FnOnce(&mut Vec<u8>) -> Result<(), E>,
    {
        let first = self.next_offset;
        let mut failed = None;
        for (key, timestamp_ms, write) in records {
            let ts = timestamp_ms.max(self.last_timestamp);
            let position = self.size + self.frames.len() as u64;
            if position >= self.opts.segment_bytes && self.next_offset > self.base {
                self.roll()?;
            }
            let position = self.size + self.frames.len() as u64;
            let len = match record::encode_with(&mut self.frames, self.next_offset, ts, key, write)
            {
                Ok(len) => len,
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            };
            if len - record::FRAME_HEADER > record::MAX_BODY_BYTES {
                let value = len - record::frame_len(key, &[]);
                self.frames.truncate(self.frames.len() - len);
                self.write_pending()?;
                return Err(self.part.too_large(value));
            }
            if self.next_offset == self.base || self.since_index >= self.opts.index_interval_bytes {
                IndexEntry {
                    offset: self.next_offset,
                    position,
                    timestamp_ms: ts,
                }
                .encode(self.base, &mut self.index_buf);
                self.since_index = 0;
            }
            self.since_index += len as u64;
            self.next_offset += 1;
            self.last_timestamp = ts;
            // A batch of many MB is written as it is encoded: the buffer stays small and
            // warm instead of growing into fresh pages (a profile of the journey benchmark
            // spent 3% of all CPU time zeroing them).
            if self.frames.len() >= WRITE_CHUNK_BYTES {
                self.write_pending()?;
            }
        }
        self.write_pending()?;
        let due = match self.opts.fsync {
            FsyncPolicy::EveryBatch => true,
            FsyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
            FsyncPolicy::Never => false,
        };
        if due && self.next_offset > first {
            self.sync()?;
        }
        Ok(match failed {
            None => Ok(first..self.next_offset),
            Some(e) => Err(e),
        })
    }

    /// Forces appended frames to stable storage.
    pub fn sync(&mut self) -> Result<(), LogError> {
        let path = segment::log_path(&self.part.dir, self.base);
        self.log.sync_data().map_err(self.part.io(&path))?;
        self.last_sync = Instant::now();
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), LogError> {
        if !self.frames.is_empty() {
            let path = segment::log_path(&self.part.dir, self.base);
            self.log
                .write_all(&self.frames)
                .map_err(self.part.io(&path))?;
            self.size += self.frames.len() as u64;
            self.frames.clear();
        }
        // The index goes after the frames it points to, so it is never ahead of them.
        if !self.index_buf.is_empty() {
            let path = segment::index_path(&self.part.dir, self.base);
            self.index
                .write_all(&self.index_buf)
                .map_err(self.part.io(&path))?;
            self.index_buf.clear();
        }
        Ok(())
    }

    fn roll(&mut self) -> Result<(), LogError> {
        self.write_pending()?;
        self.sync()?;
        let index_path = segment::index_path(&self.part.dir, self.base);
        self.index.sync_data().map_err(self.part.io(&index_path))?;
        self.base = self.next_offset;
        let log_path = segment::log_path(&self.part.dir, self.base);
        self.log = segment::no_follow(&mut OpenOptions::new())
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(self.part.io(&log_path))?;
        let index_path = segment::index_path(&self.part.dir, self.base);
        self.index = segment::no_follow(&mut OpenOptions::new())
            .create(true)
            .write(true)
            .truncate(true)
            .open(&index_path)
            .map_err(self.part.io(&index_path))?;
        self.size = 0;
        self.since_index = 0;
        Ok(())
    }
}

impl Drop for PartitionWriter {
    fn drop(&mut self) {
        // Best effort: appends already reached the OS; a failed sync here is what the fsync
        // policy allowed anyway.
        let _ = self.write_pending();
        if self.opts.fsync != FsyncPolicy::Never {
            let _ = self.log.sync_data();
        }
    }
}

struct Recovered {
    valid_len: u64,
    truncated_bytes: u64,
    reason: &'static str,
    next_offset: u64,
    last_timestamp: Option<i64>,
    index: Vec<IndexEntry>,
    since_index: u64,
}

/// Scans the last segment from its start, keeping the longest prefix of valid, dense frames
/// and rebuilding its index (the default interval: the writer's own interval only changes
/// where later entries go).
fn recover_segment(part: &PartitionRef, base: u64) -> Result<Recovered, LogError> {
    let path = segment::log_path(&part.dir, base);
    let file_len = match std::fs::metadata(&path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(part.io(&path)(e)),
    };
    let mut out = Recovered {
        valid_len: 0,
        truncated_bytes: 0,
        reason: "",
        next_offset: base,
        last_timestamp: None,
        index: Vec::new(),
        since_index: 0,
    };
    if file_len == 0 {
        return Ok(out);
    }
    let interval = WriterOptions::default().index_interval_bytes;
    let mut cursor = SegmentCursor::open(&path, 0).map_err(part.io(&path))?;
    loop {
        match cursor.peek().map_err(part.io(&path))? {
            Next::Frame {
                view,
                position,
                len,
                ..
            } => {
                if view.offset != out.next_offset {
                    out.reason = "offset out of sequence";
                    break;
                }
                if out.last_timestamp.is_some_and(|t| view.timestamp_ms < t) {
                    out.reason = "timestamp went backwards";
                    break;
                }
                if out.index.is_empty() || out.since_index >= interval {
                    out.index.push(IndexEntry {
                        offset: view.offset,
                        position,
                        timestamp_ms: view.timestamp_ms,
                    });
                    out.since_index = 0;
                }
                out.since_index += len as u64;
                out.next_offset += 1;
                out.last_timestamp = Some(view.timestamp_ms);
                cursor.consume(len);
            }
            Next::End => {
                out.reason = "incomplete record";
                break;
            }
            Next::Corrupt { reason, .. } => {
                out.reason = reason;
                break;
            }
        }
    }
    out.valid_len = cursor.position();
    out.truncated_bytes = file_len - out.valid_len;
    Ok(out)
}

/// Timestamp of the last record before segment `base` (0 when there is none): what an empty
/// last segment inherits so that time never goes back across a roll.
fn last_timestamp_before(part: &PartitionRef, bases: &[u64], base: u64) -> Result<i64, LogError> {
    let Some(&prev) = bases.iter().rev().find(|&&b| b < base) else {
        return Ok(i64::MIN);
    };
    let mut last = i64::MIN;
    scan_segment(part, prev, 0, |view, _| {
        last = view.timestamp_ms;
        true
    })?;
    Ok(last)
}

/// Calls `f` on every whole frame of a segment from `position`, until it returns false.
/// Returns the offset after the last frame visited.
fn scan_segment(
    part: &PartitionRef,
    base: u64,
    position: u64,
    mut f: impl FnMut(&record::FrameView, &[u8]) -> bool,
) -> Result<Option<u64>, LogError> {
    let path = segment::log_path(&part.dir, base);
    let mut cursor = SegmentCursor::open(&path, position).map_err(part.io(&path))?;
    let mut next = None;
    loop {
        match cursor.peek().map_err(part.io(&path))? {
            Next::Frame { view, buf, len, .. } => {
                if !f(&view, buf) {
                    return Ok(Some(view.offset));
                }
                next = Some(view.offset + 1);
                cursor.consume(len);
            }
            Next::End => return Ok(next),
            Next::Corrupt { position, reason } => {
                return Err(LogError::Corrupt {
                    topic: part.topic.clone(),
                    partition: part.partition,
                    path,
                    position,
                    reason,
                });
            }
        }
    }
}

/// Sizes and bounds of a partition, as a reader sees them now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PartitionInfo {
    pub partition: u32,
    /// First offset still stored.
    pub start_offset: u64,
    /// Offset the next record will get (= number of records ever appended).
    pub end_offset: u64,
    pub bytes: u64,
    pub segments: usize,
}

pub(crate) fn info(part: &PartitionRef) -> Result<PartitionInfo, LogError> {
    let bases = segment::list(&part.dir).map_err(part.io(&part.dir))?;
    let mut bytes = 0;
    for &b in &bases {
        let path = segment::log_path(&part.dir, b);
        bytes += std::fs::metadata(&path).map_err(part.io(&path))?.len();
    }
    let start_offset = bases.first().copied().unwrap_or(0);
    let end_offset = end_offset(part, &bases)?;
    Ok(PartitionInfo {
        partition: part.partition,
        start_offset,
        end_offset,
        bytes,
        segments: bases.len(),
    })
}

fn end_offset(part: &PartitionRef, bases: &[u64]) -> Result<u64, LogError> {
    let Some(&last) = bases.last() else {
        return Ok(0);
    };
    let len = std::fs::metadata(segment::log_path(&part.dir, last)).map_or(0, |m| m.len());
    let from = segment::read_index(&part.dir, last, len)
        .last()
        .copied()
        .unwrap_or(IndexEntry {
            offset: last,
            position: 0,
            timestamp_ms: i64::MIN,
        });
    // A frame still being written (or torn) at the tail is not part of the log yet; nor is
    // a corrupt one (zeros after a power loss, a bad checksum), but the frames before it
    // are, so the scan remembers the last good one.
    let mut seen = None;
    let next = match scan_segment(part, last, from.position, |view, _| {
        seen = Some(view.offset + 1);
        true
    }) {
        Ok(n) => n,
        Err(LogError::Corrupt { .. }) => seen,
        Err(e) => return Err(e),
    };
    Ok(next.unwrap_or(from.offset))
}

/// First offset whose append time is ≥ `timestamp_ms`; the end offset when there is none.
pub(crate) fn offset_for_timestamp(
    part: &PartitionRef,
    timestamp_ms: i64,
) -> Result<u64, LogError> {
    let bases = segment::list(&part.dir).map_err(part.io(&part.dir))?;
    // Segments whose first record is already at or after T cannot hold the answer unless it is
    // their first record; so start in the last segment that begins before T.
    let mut start = None;
    for &b in &bases {
        let len = std::fs::metadata(segment::log_path(&part.dir, b)).map_or(0, |m| m.len());
        let index = segment::read_index(&part.dir, b, len);
        match index.first() {
            Some(first) if first.timestamp_ms < timestamp_ms => {
                start = Some((b, segment::floor_by_time(&index, timestamp_ms)));
            }
            Some(_) => break,
            None => {}
        }
    }
    let Some((seg_pos, entry)) = start else {
        return Ok(bases.first().copied().unwrap_or(0));
    };
    let position = entry.map_or(0, |e| e.position);
    let mut found = None;
    for &b in bases.iter().filter(|&&b| b >= seg_pos) {
        let from = if b == seg_pos { position } else { 0 };
        scan_segment(part, b, from, |view, _| {
            if view.timestamp_ms >= timestamp_ms {
                found = Some(view.offset);
                false
            } else {
                true
            }
        })?;
        if found.is_some() {
            break;
        }
    }
    match found {
        Some(o) => Ok(o),
        None => end_offset(part, &bases),
    }
}

/// A reader of one partition; any number may exist, in any process, next to the writer.
pub struct PartitionReader {
    part: PartitionRef,
    bases: Vec<u64>,
    /// Index into `bases` of the segment `cursor` reads.
    seg: usize,
    cursor: Option<SegmentCursor>,
    next_offset: u64,
    /// Values longer than this are read through, not buffered ([`Self::limit_values`]).
    value_limit: usize,
    /// The partition directory's modification time when `bases` was listed, if old
    /// enough to tell a later change by (see [`Self::list_segments`]).
    listed_at: Option<SystemTime>,
    /// What tells a follower that the partition changed ([`Self::follow`]).
    tail: Option<TailSignal>,
    /// The signal's generation when a read last found the end, and when.
    quiet: Option<(u64, Instant)>,
}

/// How long a follower trusts its [`TailSignal`] to report every change before it looks at
/// the partition anyway: a file system that does not report another process's writes (a
/// network one) then delays records by up to this, no more than the job's own wait would.
const QUIET_RECHECK: Duration = Duration::from_millis(100);

/// How old a directory's modification time must be before an unchanged one is taken to
/// mean an unchanged directory. File system timestamps are coarse (a clock tick on Linux,
/// whole seconds on some file systems), so a file made in the same tick as the listing
/// could leave the time as it was; once the time is older than this, any later change
/// moves it.
const MTIME_GRANULARITY: Duration = Duration::from_secs(2);

impl PartitionReader {
    pub(crate) fn open(part: PartitionRef, offset: u64) -> Result<Self, LogError> {
        let mut reader = PartitionReader {
            part,
            bases: Vec::new(),
            seg: 0,
            cursor: None,
            next_offset: offset,
            value_limit: usize::MAX,
            listed_at: None,
            tail: None,
            quiet: None,
        };
        reader.seek(offset)?;
        Ok(reader)
    }

    /// From now on a record whose value is longer than `limit` is never buffered beyond
    /// the read chunk: unless it is in the buffer already (a record shorter than the
    /// chunk may be), it is read through and handed over with only a prefix of its value,
    /// [`record::FrameView::value_len`] giving its real length (a source with
    /// `max_record_bytes` dead-letters such records either way).
    pub fn limit_values(&mut self, limit: usize) {
        self.value_limit = limit;
    }

    /// Makes this reader a follower of a live partition: once a read has found the end,
    /// reads return nothing without touching the file system until `signal` reports a
    /// change (or [`QUIET_RECHECK`] passes). A job's source polls every partition several
    /// times per slice; at a live log's tail each of those polls read the segment and
    /// listed the directory, which was half of the source thread's time.
    pub fn follow(&mut self, signal: TailSignal) {
        self.tail = Some(signal);
        self.quiet = None;
    }

    /// Offset of the next record this reader returns.
    pub fn position(&self) -> u64 {
        self.next_offset
    }

    /// Positions the reader so the next record returned is `offset` (or the first record after
    /// it, once it is written, when `offset` is past the end).
    pub fn seek(&mut self, offset: u64) -> Result<(), LogError> {
        self.list_segments()?;
        self.next_offset = offset;
        self.cursor = None;
        self.quiet = None;
        self.seg = 0;
        if self.bases.is_empty() {
            return Ok(());
        }
        self.seg = self
            .bases
            .partition_point(|&b| b <= offset)
            .saturating_sub(1);
        let base = self.bases[self.seg];
        let path = segment::log_path(&self.part.dir, base);
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        let index = segment::read_index(&self.part.dir, base, len);
        let position = segment::floor_by_offset(&index, offset).map_or(0, |e| e.position);
        self.cursor = Some(SegmentCursor::open(&path, position).map_err(self.part.io(&path))?);
        Ok(())
    }

    /// Reads up to `max_records` available records; empty when the reader is caught up.
    pub fn read_batch(&mut self, max_records: usize) -> Result<Vec<Record>, LogError> {
        let mut out = Vec::new();
        self.read_into(max_records, |view, buf| out.push(view.to_record(buf)))?;
        Ok(out)
    }

    /// Like [`read_batch`](Self::read_batch) but hands each record to `f` as borrowed bytes,
    /// which saves two allocations per record on hot paths. Returns how many were visited.
    pub fn read_into(
        &mut self,
        max_records: usize,
        f: impl FnMut(&record::FrameView, &[u8]),
    ) -> Result<usize, LogError> {
        self.read_before(max_records, i64::MAX, f)
    }

    /// Append time of the next record, when one is available.
    pub fn peek_timestamp(&mut self) -> Result<Option<i64>, LogError> {
        let mut head = None;
        self.read_inner(usize::MAX, i64::MIN, &mut head, |_, _| {})?;
        Ok(head)
    }

    /// Like [`read_into`](Self::read_into), but stops before the first record appended at
    /// or after `before_ms` — what lets a job read several partitions in step by append time.
    pub fn read_before(
        &mut self,
        max_records: usize,
        before_ms: i64,
        f: impl FnMut(&record::FrameView, &[u8]),
    ) -> Result<usize, LogError> {
        self.read_inner(max_records, before_ms, &mut None, f)
    }

    /// The read loop; `stopped_at` gets the timestamp of a record left unread because of
    /// `before_ms`.
    fn read_inner(
        &mut self,
        max_records: usize,
        before_ms: i64,
        stopped_at: &mut Option<i64>,
        mut f: impl FnMut(&record::FrameView, &[u8]),
    ) -> Result<usize, LogError> {
        if let (Some(tail), Some((generation, since))) = (&self.tail, self.quiet)
            && tail.generation() == generation
            && since.elapsed() < QUIET_RECHECK
        {
            return Ok(0);
        }
        // Read before looking: a change made while looking moves it past this.
        let generation = self.tail.as_ref().map(TailSignal::generation);
        let mut at_end = false;
        let mut n = 0;
        while n < max_records {
            if self.cursor.is_none() && !self.reopen()? {
                at_end = true;
                break;
            }
            let cursor = self.cursor.as_mut().expect("reopened above");
            match cursor
                .peek_limited(self.value_limit)
                .map_err(self.part.io(&self.part.dir))?
            {
                Next::Frame { view, buf, len, .. } => {
                    if view.offset >= self.next_offset {
                        if view.offset != self.next_offset {
                            return Err(self.gap(view.offset));
                        }
                        if view.timestamp_ms >= before_ms {
                            *stopped_at = Some(view.timestamp_ms);
                            break;
                        }
                        f(&view, buf);
                        self.next_offset += 1;
                        n += 1;
                    }
                    cursor.consume(len);
                }
                Next::End => {
                    if !self.advance_segment()? {
                        at_end = true;
                        break;
                    }
                }
                Next::Corrupt { position, reason } => {
                    // The tail of the active segment may be mid-write in another process; only
                    // a sealed segment is really corrupt.
                    if self.is_last_segment()? {
                        at_end = true;
                        break;
                    }
                    return Err(LogError::Corrupt {
                        topic: self.part.topic.clone(),
                        partition: self.part.partition,
                        path: segment::log_path(&self.part.dir, self.bases[self.seg]),
                        position,
                        reason,
                    });
                }
            }
        }
        self.quiet = generation.filter(|_| at_end).map(|g| (g, Instant::now()));
        Ok(n)
    }

    fn gap(&self, found: u64) -> LogError {
        LogError::Corrupt {
            topic: self.part.topic.clone(),
            partition: self.part.partition,
            path: segment::log_path(&self.part.dir, self.bases[self.seg]),
            position: self.cursor.as_ref().map_or(0, SegmentCursor::position),
            reason: if found > self.next_offset {
                "offset gap"
            } else {
                "offset out of sequence"
            },
        }
    }

    /// Opens a cursor when the partition had no segment yet.
    fn reopen(&mut self) -> Result<bool, LogError> {
        let offset = self.next_offset;
        self.seek(offset)?;
        Ok(self.cursor.is_some())
    }

    fn is_last_segment(&mut self) -> Result<bool, LogError> {
        if self.seg + 1 < self.bases.len() {
            return Ok(false);
        }
        self.list_segments()?;
        Ok(self.seg + 1 >= self.bases.len())
    }

    /// Lists the partition's segments into `bases`, unless the directory has not changed
    /// since the last listing. A reader at the tail of a live partition asks at every
    /// poll whether the writer has rolled; listing the directory each time took 15% of a
    /// live job's CPU time, a `stat` of it is a small part of that.
    fn list_segments(&mut self) -> Result<(), LogError> {
        let dir = &self.part.dir;
        // Read before listing: a change made while listing then differs from it.
        let modified = std::fs::metadata(dir)
            .and_then(|m| m.modified())
            .map_err(self.part.io(dir))?;
        if self.listed_at == Some(modified) {
            return Ok(());
        }
        self.bases = segment::list(dir).map_err(self.part.io(dir))?;
        let settled = SystemTime::now()
            .duration_since(modified)
            .is_ok_and(|age| age > MTIME_GRANULARITY);
        self.listed_at = settled.then_some(modified);
        Ok(())
    }

    /// At the end of the current segment: moves to the next one if the writer has rolled.
    /// A roll happens only after the old segment's last write, so the old segment is read to
    /// its end once more before leaving it.
    fn advance_segment(&mut self) -> Result<bool, LogError> {
        if self.is_last_segment()? {
            return Ok(false);
        }
        let cursor = self.cursor.as_mut().expect("cursor present");
        if let Next::Frame { .. } = cursor
            .peek_limited(self.value_limit)
            .map_err(self.part.io(&self.part.dir))?
        {
            return Ok(true);
        }
        self.seg += 1;
        let path = segment::log_path(&self.part.dir, self.bases[self.seg]);
        self.cursor = Some(SegmentCursor::open(&path, 0).map_err(self.part.io(&path))?);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Log, WriterOptions};
    use super::*;

    fn values(records: Vec<Record>) -> Vec<String> {
        records
            .into_iter()
            .map(|r| String::from_utf8(r.value).unwrap())
            .collect()
    }

    /// A follower that found the end does not look again until its signal moves or the
    /// recheck time passes: an append it was not told of stays unread until then.
    #[test]
    fn a_follower_at_the_end_looks_again_only_when_its_signal_moves() {
        let tmp = tempfile::TempDir::new().unwrap();
        let log = Log::open(tmp.path()).unwrap();
        log.create_topic("views", 1).unwrap();
        let mut w = log.writer("views", 0, WriterOptions::default()).unwrap();
        let signal = TailSignal::default();
        let mut r = log.reader("views", 0, 0).unwrap();
        r.follow(signal.clone());
        w.append([(None, &b"1"[..])]).unwrap();
        assert_eq!(values(r.read_batch(10).unwrap()), ["1"]);

        w.append([(None, &b"2"[..])]).unwrap();
        assert_eq!(values(r.read_batch(10).unwrap()), Vec::<String>::new());
        assert_eq!(r.peek_timestamp().unwrap(), None);
        // A reader that does not follow looks every time.
        let mut plain = log.reader("views", 0, 1).unwrap();
        assert_eq!(values(plain.read_batch(10).unwrap()), ["2"]);

        signal.bump();
        assert!(r.peek_timestamp().unwrap().is_some());
        assert_eq!(values(r.read_batch(10).unwrap()), ["2"]);

        w.append([(None, &b"3"[..])]).unwrap();
        assert_eq!(values(r.read_batch(10).unwrap()), Vec::<String>::new());
        let (generation, since) = r.quiet.expect("quiet at the end");
        r.quiet = Some((generation, since.checked_sub(QUIET_RECHECK).unwrap()));
        assert_eq!(values(r.read_batch(10).unwrap()), ["3"]);

        // Seeking looks again, whatever the signal says.
        w.append([(None, &b"4"[..])]).unwrap();
        assert_eq!(values(r.read_batch(10).unwrap()), Vec::<String>::new());
        r.seek(2).unwrap();
        assert_eq!(values(r.read_batch(10).unwrap()), ["3", "4"]);
    }
}
