//! Test support shared by the operators' unit tests: a HashMap-backed key store (the
//! loader side of the write-behind cache) and the random event streams of the model
//! proptests (shuffled within a disorder bound, with late records and re-sends).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;

use super::{Checkpointed, KeyLoader};
use crate::decode::Event;
use crate::state::{KeyWrites, Persist, StateWriter, unpack};

/// Stored chunks by (key, chunk id).
pub type Chunks = BTreeMap<(String, u32), Vec<u8>>;

/// Drained key states, shared by a test and the operator's loader; written and read
/// back through [`Persist`] like the runtime's store (heads and chunks), counting loads.
#[derive(Clone, Default)]
pub struct MapStore {
    /// Heads, unpacked.
    pub states: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    /// Chunks by (key, id), unpacked.
    pub chunks: Arc<Mutex<Chunks>>,
    pub loads: Arc<AtomicUsize>,
}

impl<S: Persist> KeyLoader<S> for MapStore {
    fn load(&mut self, key: &str) -> Option<S> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        self.stored(key)
    }
}

impl MapStore {
    pub fn attached_to<O: Checkpointed>(op: &mut O) -> MapStore {
        let store = MapStore::default();
        op.set_loader(Box::new(store.clone()));
        store
    }

    /// The stored state of `key`, read back as the loader does (without counting).
    pub fn stored<S: Persist>(&self, key: &str) -> Option<S> {
        let states = self.states.lock().unwrap();
        let head = states.get(key)?;
        let chunks: Vec<(u32, Vec<u8>)> = self
            .chunks
            .lock()
            .unwrap()
            .range((key.to_owned(), 0)..=(key.to_owned(), u32::MAX))
            .map(|((_, id), bytes)| (*id, bytes.clone()))
            .collect();
        Some(S::read(head, &chunks).unwrap())
    }

    /// Drains `op`'s changes into the store at `epoch`; returns the reported keys
    /// (sorted) and whether each still has state. Fails on a key reported twice, and
    /// on a chunk written twice or deleted while absent.
    pub fn drain<O: Checkpointed>(&self, op: &mut O, epoch: u64) -> Vec<(String, bool)> {
        let writes = op.drain_writes(epoch, &mut Vec::new()).unwrap();
        let mut reported: Vec<(String, bool)> = writes
            .heads
            .iter()
            .map(|(k, _)| (k.clone(), true))
            .chain(writes.deletes.iter().map(|k| (k.clone(), false)))
            .collect();
        self.apply(writes);
        reported.sort();
        let mut keys: Vec<&String> = reported.iter().map(|(k, _)| k).collect();
        keys.dedup();
        assert_eq!(
            keys.len(),
            reported.len(),
            "a key reported twice: {reported:?}"
        );
        reported
    }

    /// Stores `state` for `key` as a checkpoint would (a store restored from).
    pub fn put<S: Persist>(&self, key: &str, state: &mut S) {
        let mut writes = KeyWrites::default();
        let mut scratch = Vec::new();
        state
            .write(&mut StateWriter::new(key, &mut writes, &mut scratch))
            .unwrap();
        self.apply(writes);
    }

    fn apply(&self, writes: KeyWrites) {
        let mut states = self.states.lock().unwrap();
        let mut chunks = self.chunks.lock().unwrap();
        for (key, id) in writes.chunk_deletes {
            assert!(
                chunks.remove(&(key, id)).is_some(),
                "deleted an absent chunk"
            );
        }
        for (key, id, bytes) in writes.chunks {
            let old = chunks.insert((key, id), unpack(&bytes).unwrap());
            assert!(old.is_none(), "a chunk written twice");
        }
        for (key, bytes) in writes.heads {
            states.insert(key, unpack(&bytes).unwrap());
        }
        for key in writes.deletes {
            states.remove(&key);
            let left = chunks
                .range((key.clone(), 0)..=(key.clone(), u32::MAX))
                .count();
            assert_eq!(left, 0, "key {key} deleted with chunks left");
        }
    }

    /// Whether nothing at all is stored (no head, no chunk).
    pub fn is_empty(&self) -> bool {
        self.states.lock().unwrap().is_empty() && self.chunks.lock().unwrap().is_empty()
    }

    /// Forgets everything (a store that lost its data).
    pub fn clear(&self) {
        self.states.lock().unwrap().clear();
        self.chunks.lock().unwrap().clear();
    }

    pub fn loads(&self) -> usize {
        self.loads.load(Ordering::Relaxed)
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.states.lock().unwrap().keys().cloned().collect();
        keys.sort();
        keys
    }
}

#[derive(Debug, Clone)]
pub struct Gen {
    pub key: u8,
    pub source: u16,
    pub partition: u32,
    pub time: i64,
    pub has_id: bool,
    pub duplicated: bool,
    pub delay: i64,
    pub dup_delay: i64,
    pub late: bool,
}

pub fn gen_event() -> impl Strategy<Value = Gen> {
    (
        (0u8..4, 0u16..3, 0u32..2, 0i64..400),
        (any::<bool>(), prop::bool::weighted(0.2)),
        (0i64..1000, 0i64..1000, prop::bool::weighted(0.15)),
    )
        .prop_map(
            |((key, source, partition, time), (has_id, duplicated), (delay, dup_delay, late))| {
                Gen {
                    key,
                    source,
                    partition,
                    time,
                    has_id,
                    duplicated,
                    delay,
                    dup_delay,
                    late,
                }
            },
        )
}

/// Builds the records (originals and byte-identical re-sends with their own
/// offsets) and their arrival order. Delays are within `bound` unless
/// `with_late` and the event is marked late (then up to 300 beyond it).
pub fn arrivals(gens: &[Gen], bound: i64, with_late: bool) -> Vec<Event> {
    let mut keyed = Vec::new();
    let mut offset = 0u64;
    for (i, g) in gens.iter().enumerate() {
        let delay_of = |d: i64| {
            if with_late && g.late {
                bound + 1 + d % 300
            } else {
                d % (bound + 1)
            }
        };
        let id = g.has_id.then(|| format!("e{i}"));
        let copies = if g.duplicated && g.has_id { 2 } else { 1 };
        for c in 0..copies {
            let e = Event {
                source: g.source,
                partition: g.partition,
                offset,
                key: format!("k{}", g.key),
                time: g.time,
                id: id.as_deref().map(Into::into),
                payload: "{}".into(),
            };
            let delay = delay_of(if c == 0 { g.delay } else { g.dup_delay });
            keyed.push((g.time + delay, offset, e));
            offset += 1;
        }
    }
    keyed.sort_by_key(|(at, o, _)| (*at, *o));
    keyed.into_iter().map(|(_, _, e)| e).collect()
}
