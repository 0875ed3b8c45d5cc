//! Test support shared by the operators' unit tests: a HashMap-backed key store (the
//! loader side of the write-behind cache) and the random event streams of the model
//! proptests (shuffled within a disorder bound, with late records and re-sends).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use serde::de::DeserializeOwned;

use super::{Checkpointed, KeyLoader};
use crate::decode::Event;

/// Drained key states, shared by a test and the operator's loader; stored as
/// postcard bytes like the runtime's store, and counting loads.
#[derive(Clone, Default)]
pub struct MapStore {
    pub states: Arc<Mutex<HashMap<String, Vec<u8>>>>,
    pub loads: Arc<AtomicUsize>,
}

impl<S: DeserializeOwned> KeyLoader<S> for MapStore {
    fn load(&mut self, key: &str) -> Option<S> {
        self.loads.fetch_add(1, Ordering::Relaxed);
        let states = self.states.lock().unwrap();
        states
            .get(key)
            .map(|bytes| postcard::from_bytes(bytes).unwrap())
    }
}

impl MapStore {
    pub fn attached_to<O: Checkpointed>(op: &mut O) -> MapStore {
        let store = MapStore::default();
        op.set_loader(Box::new(store.clone()));
        store
    }

    /// Drains `op`'s changes into the store at `epoch`; returns the reported keys
    /// (sorted) and whether each still has state. Fails on a key reported twice.
    pub fn drain<O: Checkpointed>(&self, op: &mut O, epoch: u64) -> Vec<(String, bool)> {
        let mut reported = Vec::new();
        let mut states = self.states.lock().unwrap();
        op.drain_changes(epoch, &mut |key, state| {
            reported.push((key.to_string(), state.is_some()));
            match state {
                Some(s) => states.insert(key.into(), postcard::to_allocvec(s).unwrap()),
                None => states.remove(key),
            };
        });
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
                id: id.clone(),
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
