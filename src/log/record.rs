//! Record framing: the only place that knows the on-disk byte layout of a record.
//!
//! ```text
//! frame  := body_len: u32 LE | crc32: u32 LE (over body) | body
//! body   := offset: u64 LE | timestamp_ms: i64 LE | key_len: i32 LE (-1 = no key) | key | value
//! ```
//!
//! Invariants: a frame is only trusted when its length is plausible, the whole body is present
//! and its CRC matches; the stored offset lets a reader check density without any other file.

use std::ops::Range;

/// Bytes of the frame header (`body_len` + `crc32`).
pub const FRAME_HEADER: usize = 8;
/// Bytes of the fixed part of a body (offset, timestamp, key length).
pub const BODY_FIXED: usize = 8 + 8 + 4;
/// Upper bound of one record's body; anything larger is treated as corruption, so a garbage
/// length never makes a reader wait for gigabytes that will never come.
pub const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// A record as stored in a partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: u64,
    /// Append time in epoch milliseconds (never decreasing within a partition).
    pub timestamp_ms: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
}

/// Size of the frame that [`encode`] writes for this key and value.
pub fn frame_len(key: Option<&[u8]>, value: &[u8]) -> usize {
    FRAME_HEADER + BODY_FIXED + key.map_or(0, <[u8]>::len) + value.len()
}

/// Appends one frame to `out`.
pub fn encode(out: &mut Vec<u8>, offset: u64, timestamp_ms: i64, key: Option<&[u8]>, value: &[u8]) {
    let written = encode_with(out, offset, timestamp_ms, key, |out| {
        out.extend_from_slice(value);
        Ok::<(), std::convert::Infallible>(())
    });
    let Ok(_) = written;
}

/// Appends one frame whose value `write` appends to `out` in place, so that a producer
/// need not build the value in a buffer of its own first (the outbox decompresses a
/// record straight into the frame). Returns the frame's length; if `write` fails, `out`
/// is left as it was. The caller checks the length against [`MAX_BODY_BYTES`].
pub fn encode_with<E>(
    out: &mut Vec<u8>,
    offset: u64,
    timestamp_ms: i64,
    key: Option<&[u8]>,
    write: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
) -> Result<usize, E> {
    let start = out.len();
    // The body length and the CRC are known only once the value is written.
    out.extend_from_slice(&[0; FRAME_HEADER]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&timestamp_ms.to_le_bytes());
    match key {
        Some(k) => {
            out.extend_from_slice(&(k.len() as i32).to_le_bytes());
            out.extend_from_slice(k);
        }
        None => out.extend_from_slice(&(-1i32).to_le_bytes()),
    }
    if let Err(e) = write(out) {
        out.truncate(start);
        return Err(e);
    }
    let body_len = out.len() - start - FRAME_HEADER;
    let crc = crc32fast::hash(&out[start + FRAME_HEADER..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(out.len() - start)
}

/// What a byte slice holds at its start.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A whole, valid frame of `len` bytes.
    Frame { len: usize, view: FrameView },
    /// The slice ends inside a frame (a tail still being written, or torn by a crash).
    Incomplete { needed: usize },
    /// The bytes cannot be a frame.
    Corrupt(&'static str),
}

/// Borrow-free description of a valid frame: ranges into the slice it was decoded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameView {
    pub offset: u64,
    pub timestamp_ms: i64,
    pub key: Option<Range<usize>>,
    pub value: Range<usize>,
    /// The value's length in the log: more than `value.len()` when a reader with a value
    /// limit kept only a prefix of an oversized record (its CRC still checked over all of
    /// it).
    pub value_len: usize,
}

impl FrameView {
    pub fn to_record(&self, buf: &[u8]) -> Record {
        Record {
            offset: self.offset,
            timestamp_ms: self.timestamp_ms,
            key: self.key.clone().map(|r| buf[r].to_vec()),
            value: buf[self.value.clone()].to_vec(),
        }
    }
}

/// Decodes the frame at the start of `buf`.
pub fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < FRAME_HEADER {
        return Decoded::Incomplete {
            needed: FRAME_HEADER,
        };
    }
    let body_len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    if !(BODY_FIXED..=MAX_BODY_BYTES).contains(&body_len) {
        return Decoded::Corrupt("implausible record length");
    }
    let len = FRAME_HEADER + body_len;
    if buf.len() < len {
        return Decoded::Incomplete { needed: len };
    }
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    let body = &buf[FRAME_HEADER..len];
    if crc32fast::hash(body) != crc {
        return Decoded::Corrupt("checksum mismatch");
    }
    let offset = u64::from_le_bytes(body[0..8].try_into().expect("8 bytes"));
    let timestamp_ms = i64::from_le_bytes(body[8..16].try_into().expect("8 bytes"));
    let key_len = i32::from_le_bytes(body[16..20].try_into().expect("4 bytes"));
    let key_start = FRAME_HEADER + BODY_FIXED;
    let (key, value_start) = if key_len < 0 {
        (None, key_start)
    } else {
        let end = key_start + key_len as usize;
        if end > len {
            return Decoded::Corrupt("key length exceeds record");
        }
        (Some(key_start..end), end)
    };
    Decoded::Frame {
        len,
        view: FrameView {
            offset,
            timestamp_ms,
            key,
            value: value_start..len,
            value_len: len - value_start,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(offset: u64, key: Option<&[u8]>, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(&mut out, offset, 1_700_000_000_000, key, value);
        out
    }

    #[test]
    fn round_trip_with_and_without_key() {
        for key in [None, Some(&b""[..]), Some(&b"customer-7"[..])] {
            let buf = frame(42, key, b"{\"a\":1}");
            assert_eq!(buf.len(), frame_len(key, b"{\"a\":1}"));
            let Decoded::Frame { len, view } = decode(&buf) else {
                panic!("not a frame")
            };
            assert_eq!(len, buf.len());
            let rec = view.to_record(&buf);
            assert_eq!(rec.offset, 42);
            assert_eq!(rec.timestamp_ms, 1_700_000_000_000);
            assert_eq!(rec.key.as_deref(), key);
            assert_eq!(rec.value, b"{\"a\":1}");
        }
    }

    #[test]
    fn a_value_written_in_place_makes_the_same_frame_and_a_failed_one_leaves_nothing() {
        let mut out = b"earlier bytes".to_vec();
        let len = encode_with(&mut out, 9, 5, Some(b"k"), |o| {
            o.extend_from_slice(b"{\"a\":");
            o.extend_from_slice(b"1}");
            Ok::<(), ()>(())
        })
        .unwrap();
        assert_eq!(len, frame_len(Some(b"k"), b"{\"a\":1}"));
        let mut expected = b"earlier bytes".to_vec();
        encode(&mut expected, 9, 5, Some(b"k"), b"{\"a\":1}");
        assert_eq!(out, expected);
        let failed = encode_with(&mut out, 10, 5, None, |o| {
            o.extend_from_slice(b"half a val");
            Err("corrupt")
        });
        assert_eq!(failed, Err("corrupt"));
        assert_eq!(out, expected);
    }

    #[test]
    fn every_truncation_is_incomplete_and_every_bit_flip_is_detected() {
        let buf = frame(7, Some(b"k"), b"hello world");
        for cut in 0..buf.len() {
            assert!(
                matches!(decode(&buf[..cut]), Decoded::Incomplete { .. }),
                "cut at {cut}"
            );
        }
        for byte in 0..buf.len() {
            let mut bad = buf.clone();
            bad[byte] ^= 0x10;
            assert!(
                !matches!(decode(&bad), Decoded::Frame { .. }),
                "flip in byte {byte} went unnoticed"
            );
        }
    }

    #[test]
    fn garbage_length_is_corrupt_not_a_wait() {
        let buf = [0xff_u8; 16];
        assert_eq!(decode(&buf), Decoded::Corrupt("implausible record length"));
        let zeros = [0_u8; 16];
        assert_eq!(
            decode(&zeros),
            Decoded::Corrupt("implausible record length")
        );
    }
}
