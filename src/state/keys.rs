//! Every RocksDB key the state store writes, encoded and decoded in one place.
//!
//! # Layout, per column family
//!
//! | CF          | key                                   | value                                  |
//! |-------------|---------------------------------------|----------------------------------------|
//! | `meta`      | `b"format_version"`                   | u32 big-endian ([`FORMAT_VERSION`])    |
//! | `meta`      | `b"fingerprint"`                      | u128 big-endian (the plan fingerprint) |
//! | `meta`      | `b"watermarks"`                       | postcard-encoded watermark snapshot    |
//! | `meta`      | `b"next_journal"`                     | u64 big-endian: the next journal's number (never reused) |
//! | `positions` | `str(topic) ‖ u32be(partition)`       | u64 big-endian: next offset to read    |
//! | `keys`      | the correlation key's UTF-8 bytes     | packed head of the key's state         |
//! | `chunks`    | `str(key) ‖ u32be(chunk id)`          | packed chunk of the key's events       |
//! | `outbox`    | `b"j" ‖ u64be(n)`                     | postcard `JournalMeta` of journal `n`  |
//! | `outbox`    | `b"a" ‖ u64be(n) ‖ str(topic) ‖ u32be(partition)` | u64 big-endian: journal `n`'s records of that partition acknowledged up to this seq |
//! | `outbox`    | `b"i" ‖ u64be(n)`                     | inline journal `n`: its bytes, in the journal file format |
//!
//! `str(s)` is the order-preserving escaped form of a string: every 0x00 byte becomes
//! `00 FF` and the string ends with `00 01`. It is self-delimiting (a topic may contain any
//! byte, a prefix of one topic is never confused with another) and byte-wise comparison
//! of encoded keys equals comparison of the tuples, so a RocksDB iterator walks positions
//! by (topic, partition) and the outbox's journals by number. Integers are big-endian
//! for the same reason (little-endian would put 256 before 1).
//!
//! The output records of a checkpoint are in a journal that its `outbox` entry names: a
//! file, or for a small one an `i` value written in the same batch
//! (`crate::state::journal`).
//!
//! The `keys` CF holds only correlation keys, so it needs no framing: the key is stored
//! as its raw UTF-8 bytes, which keeps point lookups and the bloom filter cheap. A key's
//! head is its whole state for most kinds; kinds that keep events apart (sessions) store
//! each event once, in a chunk written at the checkpoint after it arrived, and the head
//! lists the chunks (`crate::state::StateWriter`). `str(key)` frames chunk keys so that
//! one key's chunks are exactly the keys with prefix `str(key)`, in id order.

/// Version of this layout; stored in `meta` on creation and checked on open.
pub const FORMAT_VERSION: u32 = 6;

/// The older layout this one reads and upgrades in place: version 5 had no inline
/// journals, and is otherwise the same.
pub const UPGRADES_FROM: u32 = 5;

/// Column family names.
pub const CF_META: &str = "meta";
pub const CF_POSITIONS: &str = "positions";
pub const CF_KEYS: &str = "keys";
pub const CF_OUTBOX: &str = "outbox";
pub const CF_CHUNKS: &str = "chunks";
/// All column families a braid state store has (besides RocksDB's `default`).
pub const ALL_CFS: [&str; 5] = [CF_META, CF_POSITIONS, CF_KEYS, CF_OUTBOX, CF_CHUNKS];

/// Keys in the `meta` column family.
pub const META_FORMAT_VERSION: &[u8] = b"format_version";
pub const META_FINGERPRINT: &[u8] = b"fingerprint";
pub const META_WATERMARKS: &[u8] = b"watermarks";
pub const META_NEXT_JOURNAL: &[u8] = b"next_journal";

/// Why a stored key could not be decoded; the store adds the directory and CF.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("string is not terminated")]
    Unterminated,
    #[error("invalid escape 0x00 0x{0:02x}")]
    BadEscape(u8),
    #[error("string is not UTF-8")]
    NotUtf8,
    #[error("expected {expected} trailing bytes, found {found}")]
    BadLength { expected: usize, found: usize },
    #[error("unknown tag byte 0x{0:02x}")]
    BadTag(u8),
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    for &b in s.as_bytes() {
        if b == 0 {
            out.extend_from_slice(&[0x00, 0xFF]);
        } else {
            out.push(b);
        }
    }
    out.extend_from_slice(&[0x00, 0x01]);
}

/// Decodes a `str(s)` at the start of `bytes`; returns it and the rest.
fn take_str(bytes: &[u8]) -> Result<(String, &[u8]), KeyError> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b != 0 {
            out.push(b);
            i += 1;
            continue;
        }
        match bytes.get(i + 1) {
            Some(0xFF) => {
                out.push(0);
                i += 2;
            }
            Some(0x01) => {
                let s = String::from_utf8(out).map_err(|_| KeyError::NotUtf8)?;
                return Ok((s, &bytes[i + 2..]));
            }
            Some(&other) => return Err(KeyError::BadEscape(other)),
            None => return Err(KeyError::Unterminated),
        }
    }
    Err(KeyError::Unterminated)
}

/// `str(s) ‖ u32be(n)`: position keys (topic, partition), chunk keys (key, chunk id)
/// and the prefix of outbox keys (topic, partition).
fn str_u32(s: &str, n: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len() + 2 + 4 + 8);
    push_str(&mut out, s);
    out.extend_from_slice(&n.to_be_bytes());
    out
}

/// Reverses [`str_u32`]; nothing may follow.
fn decode_str_u32(key: &[u8]) -> Result<(String, u32), KeyError> {
    let (s, rest) = take_str(key)?;
    let (n, rest) = take_u32(rest)?;
    if !rest.is_empty() {
        return Err(KeyError::BadLength {
            expected: 0,
            found: rest.len(),
        });
    }
    Ok((s, n))
}

/// `str(topic) ‖ u32be(partition)`: the prefix shared by positions and outbox keys.
pub fn partition_prefix(topic: &str, partition: u32) -> Vec<u8> {
    str_u32(topic, partition)
}

fn take_u32(rest: &[u8]) -> Result<(u32, &[u8]), KeyError> {
    let (head, tail) = rest.split_at_checked(4).ok_or(KeyError::BadLength {
        expected: 4,
        found: rest.len(),
    })?;
    let mut buf = [0u8; 4];
    buf.copy_from_slice(head);
    Ok((u32::from_be_bytes(buf), tail))
}

/// Key of a source position in the `positions` CF.
pub fn position_key(topic: &str, partition: u32) -> Vec<u8> {
    partition_prefix(topic, partition)
}

pub fn decode_position_key(key: &[u8]) -> Result<(String, u32), KeyError> {
    decode_str_u32(key)
}

/// Key of journal `n`'s entry in the `outbox` CF.
pub fn journal_key(n: u64) -> [u8; 9] {
    tagged(b'j', n)
}

/// Key of inline journal `n`'s bytes in the `outbox` CF.
pub fn inline_key(n: u64) -> [u8; 9] {
    tagged(b'i', n)
}

/// `tag ‖ u64be(n)`.
fn tagged(tag: u8, n: u64) -> [u8; 9] {
    let mut out = [tag; 9];
    out[1..].copy_from_slice(&n.to_be_bytes());
    out
}

/// Key of how far journal `n`'s records of an output topic/partition are acknowledged,
/// in the `outbox` CF.
pub fn ack_key(n: u64, topic: &str, partition: u32) -> Vec<u8> {
    let mut out = vec![b'a'];
    out.extend_from_slice(&n.to_be_bytes());
    out.extend_from_slice(&partition_prefix(topic, partition));
    out
}

/// The range `[from, to)` of journal `n`'s acknowledgement keys.
pub fn ack_range(n: u64) -> (Vec<u8>, Vec<u8>) {
    let mut from = vec![b'a'];
    from.extend_from_slice(&n.to_be_bytes());
    let to = match n.checked_add(1) {
        Some(next) => {
            let mut to = vec![b'a'];
            to.extend_from_slice(&next.to_be_bytes());
            to
        }
        None => vec![b'b'],
    };
    (from, to)
}

/// An `outbox` CF key: a journal's, an inline journal's bytes or an acknowledgement's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutboxKey {
    Journal(u64),
    Inline(u64),
    Ack(u64, String, u32),
}

pub fn decode_outbox_key(key: &[u8]) -> Result<OutboxKey, KeyError> {
    match key.split_first() {
        Some((b'j', n)) => Ok(OutboxKey::Journal(decode_u64(n)?)),
        Some((b'i', n)) => Ok(OutboxKey::Inline(decode_u64(n)?)),
        Some((b'a', rest)) => {
            let (n, rest) = rest.split_at_checked(8).ok_or(KeyError::BadLength {
                expected: 8,
                found: rest.len(),
            })?;
            let (topic, partition) = decode_str_u32(rest)?;
            Ok(OutboxKey::Ack(decode_u64(n)?, topic, partition))
        }
        Some((&other, _)) => Err(KeyError::BadTag(other)),
        None => Err(KeyError::BadLength {
            expected: 9,
            found: 0,
        }),
    }
}

/// Key of a correlation key's state in the `keys` CF.
pub fn state_key(key: &str) -> &[u8] {
    key.as_bytes()
}

pub fn decode_state_key(key: &[u8]) -> Result<&str, KeyError> {
    std::str::from_utf8(key).map_err(|_| KeyError::NotUtf8)
}

/// The prefix of every chunk of `key` in the `chunks` CF.
pub fn chunk_prefix(key: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(key.len() + 2 + 4);
    push_str(&mut out, key);
    out
}

/// Key of one chunk of a correlation key's events in the `chunks` CF.
pub fn chunk_key(key: &str, id: u32) -> Vec<u8> {
    str_u32(key, id)
}

pub fn decode_chunk_key(key: &[u8]) -> Result<(String, u32), KeyError> {
    decode_str_u32(key)
}

/// Decodes exactly eight big-endian bytes (position values, journal numbers, acks).
pub fn decode_u64(bytes: &[u8]) -> Result<u64, KeyError> {
    let buf: [u8; 8] = bytes.try_into().map_err(|_| KeyError::BadLength {
        expected: 8,
        found: bytes.len(),
    })?;
    Ok(u64::from_be_bytes(buf))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tricky_string() -> impl Strategy<Value = String> {
        prop::collection::vec(
            prop_oneof![
                Just('\u{0}'),
                Just('\u{1}'),
                Just('\u{FF}'),
                Just('a'),
                any::<char>()
            ],
            0..12,
        )
        .prop_map(|cs| cs.into_iter().collect())
    }

    proptest! {
        #[test]
        fn state_keys_round_trip(key in tricky_string()) {
            prop_assert_eq!(decode_state_key(state_key(&key)).unwrap(), key.as_str());
        }

        #[test]
        fn position_keys_round_trip(topic in tricky_string(), partition in any::<u32>()) {
            let decoded = decode_position_key(&position_key(&topic, partition)).unwrap();
            prop_assert_eq!(decoded, (topic, partition));
        }

        #[test]
        fn chunk_keys_round_trip_sort_like_tuples_and_share_the_key_prefix(
            a in (tricky_string(), any::<u32>()),
            b in (tricky_string(), any::<u32>()),
        ) {
            let (ka, kb) = (chunk_key(&a.0, a.1), chunk_key(&b.0, b.1));
            prop_assert_eq!(decode_chunk_key(&ka).unwrap(), a.clone());
            prop_assert_eq!(ka.cmp(&kb), a.cmp(&b));
            prop_assert_eq!(kb.starts_with(&chunk_prefix(&a.0)), a.0 == b.0);
        }

        #[test]
        fn outbox_keys_round_trip_and_a_journals_acks_are_its_range(
            (topic, partition) in (tricky_string(), any::<u32>()),
            a in any::<u64>(),
            b in any::<u64>(),
        ) {
            let (ja, jb) = (journal_key(a), journal_key(b));
            prop_assert_eq!(decode_outbox_key(&ja).unwrap(), OutboxKey::Journal(a));
            prop_assert_eq!(ja.cmp(&jb), a.cmp(&b));
            let inline = inline_key(a);
            prop_assert_eq!(decode_outbox_key(&inline).unwrap(), OutboxKey::Inline(a));
            prop_assert_eq!(inline.cmp(&inline_key(b)), a.cmp(&b));
            let ack = ack_key(a, &topic, partition);
            prop_assert_eq!(
                decode_outbox_key(&ack).unwrap(),
                OutboxKey::Ack(a, topic.clone(), partition)
            );
            let in_range = |n: u64| {
                let (from, to) = ack_range(n);
                from <= ack && ack < to
            };
            prop_assert!(in_range(a));
            prop_assert_eq!(in_range(b), a == b);
        }
    }

    #[test]
    fn the_last_journals_ack_range_is_closed() {
        let (from, to) = ack_range(u64::MAX);
        let ack = ack_key(u64::MAX, "\u{10FFFF}", u32::MAX);
        assert!(from <= ack && ack < to);
    }

    #[test]
    fn damaged_keys_are_errors_not_panics() {
        assert_eq!(take_str(b"abc").unwrap_err(), KeyError::Unterminated);
        assert_eq!(take_str(b"a\x00").unwrap_err(), KeyError::Unterminated);
        assert_eq!(
            take_str(b"a\x00\x07").unwrap_err().to_string(),
            "invalid escape 0x00 0x07"
        );
        assert_eq!(
            decode_outbox_key(b"j\x00\x01\x02").unwrap_err().to_string(),
            "expected 8 trailing bytes, found 3"
        );
        assert_eq!(
            decode_outbox_key(b"t\x00\x01").unwrap_err().to_string(),
            "unknown tag byte 0x74"
        );
        assert_eq!(decode_state_key(b"\xff").unwrap_err(), KeyError::NotUtf8);
    }
}
