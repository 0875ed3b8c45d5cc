//! The write-behind key cache every operator keeps its per-key state in: a bounded
//! in-memory map over the state store, with the bookkeeping the runtime needs to
//! checkpoint changed keys at barriers ([`KeyCache::drain`]), evict clean committed keys
//! ([`KeyCache::evict`]) and read evicted keys back ([`KeyLoader`]).
//!
//! The operator owns everything else about a key (its timers, what its state means);
//! the cache only tracks where the state lives and whether the store has its current
//! value. Guarantees:
//! - Every change of a key goes through [`Entry::state_mut`], [`KeyCache::insert`] or
//!   [`KeyCache::remove`], which mark it dirty once: a flag in its entry plus its name
//!   in a list, so the hot path pays no extra hashing. Reading
//!   ([`Entry::state`]) marks nothing.
//! - [`KeyCache::drain`] reports each dirty key once, with its state or `None` when it is
//!   gone; a key whose state appeared and vanished between two drains is not reported,
//!   since the store never held it.
//! - Only clean keys whose last drain epoch is `≤` the committed epoch are evicted, so
//!   the stored copy is durable and equal to the cached one; least recently drained
//!   first (a FIFO of drains; entries made stale by a later drain are skipped, and
//!   compacted away at drains so the queue stays proportional to the cache). Keys
//!   restored or read back from the store count as drained at epoch 0 and at the
//!   latest drain epoch respectively. Without a loader nothing is evicted.
//! - A key that is not cached is looked up in the set of evicted keys before the loader
//!   is asked, so brand-new keys never cost a store read.
//! - An empty state ([`CacheState::is_empty`]) is no state: it is never cached, and one
//!   found in the store is deleted at the next drain.
//! - If the loader has nothing for an evicted key (a storage problem the loader reports
//!   itself), the key has no state from then on and [`KeyCache::get_mut`] says so
//!   ([`Lookup::Lost`]), so the operator drops what else it keeps for the key (timers
//!   never point at missing state).

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::collections::hash_map;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use super::{FastMap, FastSet};

/// Reads back the committed state of an evicted key. Implemented by the runtime over
/// the state store; tests implement it over a HashMap. `None` means "no stored state".
pub trait KeyLoader<S>: Send {
    fn load(&mut self, key: &str) -> Option<S>;
}

/// What the cache needs to know of a per-key state.
pub trait CacheState {
    /// Whether the state holds nothing, i.e. the key has no state at all.
    fn is_empty(&self) -> bool;
}

/// How [`KeyCache::get_mut`] lookups went, since the cache was made (for the cache hit
/// ratio metric: `hits / (hits + read_back)`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// The state was in memory.
    pub hits: u64,
    /// The key was evicted: its state was read back from the store (or found gone).
    pub read_back: u64,
    /// The key had no state; no store read.
    pub new: u64,
}

/// The installed loader; a newtype only so the cache can stay `Debug`.
struct Loader<S>(Option<Box<dyn KeyLoader<S>>>);

impl<S> fmt::Debug for Loader<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Loader" } else { "None" })
    }
}

/// Longest key [`MapKey`] holds in the table itself.
const INLINE_KEY: usize = 22;

/// The cache's map key: a short key's bytes in the table itself, a longer one shared.
/// Finding a key compares it with the key in the matching slot; behind an `Arc` that is
/// one more cache miss per event (about 4% of all CPU time in a call-graph profile of the
/// journey benchmark, whose keys have 8 bytes). Hashes and compares as the `str` it holds,
/// so the map is searched by `&str`.
#[derive(Debug, Clone)]
enum MapKey {
    Inline { len: u8, bytes: [u8; INLINE_KEY] },
    Shared(Arc<str>),
}

impl MapKey {
    fn new(key: &Arc<str>) -> Self {
        if key.len() <= INLINE_KEY {
            let mut bytes = [0; INLINE_KEY];
            bytes[..key.len()].copy_from_slice(key.as_bytes());
            MapKey::Inline {
                len: key.len() as u8,
                bytes,
            }
        } else {
            MapKey::Shared(key.clone())
        }
    }

    fn as_str(&self) -> &str {
        match self {
            // SAFETY: the bytes are a copy of a whole `str` (`MapKey::new`), so UTF-8.
            MapKey::Inline { len, bytes } => unsafe {
                std::str::from_utf8_unchecked(&bytes[..usize::from(*len)])
            },
            MapKey::Shared(key) => key,
        }
    }
}

impl Borrow<str> for MapKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl Hash for MapKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

impl PartialEq for MapKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for MapKey {}

/// A key's state in memory and its write-behind bookkeeping.
#[derive(Debug)]
struct Cached<S> {
    /// The map's own key, kept here so one lookup yields both (timers need the `Arc`).
    key: Arc<str>,
    state: S,
    /// Changed since the last drain; the key is then in `KeyCache::dirty`.
    dirty: bool,
    /// The store holds a state for this key (drained, restored or read back), so its
    /// disappearance must be reported as a delete.
    stored: bool,
    /// Epoch of the drain that last wrote it (see the module doc for restored and
    /// read-back keys); matches at most one `drain_order` entry, the live one.
    drained: u64,
}

/// The per-key states of one operator, cached over the state store (module doc).
#[derive(Debug)]
pub struct KeyCache<S> {
    /// The cached keys.
    keys: FastMap<MapKey, Cached<S>>,
    /// Keys with state in the store only; disjoint from `keys`.
    evicted: FastSet<Arc<str>>,
    /// Keys marked dirty since the last drain; an entry whose key has since gone or
    /// been restored clean, or that was listed again after a removal, is skipped.
    dirty: Vec<Arc<str>>,
    /// Keys whose stored state vanished since the last drain (to report as `None`).
    removed: FastSet<Arc<str>>,
    /// (drain epoch, key) in drain order, the eviction order; stale entries allowed.
    drain_order: VecDeque<(u64, Arc<str>)>,
    /// Highest epoch drained so far.
    last_drain: u64,
    loader: Loader<S>,
    counts: CacheCounts,
}

/// What [`KeyCache::get_mut`] found.
#[derive(Debug)]
pub enum Lookup<'c, S> {
    /// The key's state, in memory (read back from the store first if it was evicted).
    Found(Entry<'c, S>),
    /// The key has no state; no store read was made.
    New,
    /// The key was evicted, but the store had no state for it: it has none now. The
    /// operator drops whatever else it keeps for the key (its timers).
    Lost,
}

/// A cached key's state; changing it marks the key dirty.
#[derive(Debug)]
pub struct Entry<'c, S> {
    cached: &'c mut Cached<S>,
    dirty: &'c mut Vec<Arc<str>>,
}

impl<S> Entry<'_, S> {
    /// The key, as the cache shares it (clone it for timers rather than allocating).
    pub fn key(&self) -> &Arc<str> {
        &self.cached.key
    }

    /// The state, for reading only: nothing is marked.
    pub fn state(&self) -> &S {
        &self.cached.state
    }

    /// The state, to change it: the key is reported at the next drain. Call it only
    /// when a change is certain (duplicates and late events must not mark keys).
    pub fn state_mut(&mut self) -> &mut S {
        mark_dirty(self.cached, self.dirty);
        &mut self.cached.state
    }
}

/// What a key held before [`KeyCache::restore`] replaced it.
#[derive(Debug, PartialEq, Eq)]
pub enum Replaced<S> {
    /// No state.
    Nothing,
    /// This state, which was cached.
    Cached(S),
    /// A state in the store only; it was not read back.
    Evicted,
}

/// Marks a cached key dirty, listing it the first time since the last drain.
fn mark_dirty<S>(cached: &mut Cached<S>, dirty: &mut Vec<Arc<str>>) {
    if !cached.dirty {
        cached.dirty = true;
        dirty.push(cached.key.clone());
    }
}

impl<S> Default for KeyCache<S> {
    fn default() -> Self {
        KeyCache {
            keys: FastMap::default(),
            evicted: FastSet::default(),
            dirty: Vec::new(),
            removed: FastSet::default(),
            drain_order: VecDeque::new(),
            last_drain: 0,
            loader: Loader(None),
            counts: CacheCounts::default(),
        }
    }
}

impl<S: CacheState> KeyCache<S> {
    /// An empty cache without a loader.
    pub fn new() -> Self {
        Self::default()
    }

    /// Installs the loader used for evicted keys. Without a loader nothing is ever
    /// evicted ([`KeyCache::evict`] is a no-op) and no load is attempted.
    pub fn set_loader(&mut self, loader: Box<dyn KeyLoader<S>>) {
        self.loader = Loader(Some(loader));
    }

    /// How lookups went so far.
    pub fn counts(&self) -> CacheCounts {
        self.counts
    }

    /// Keys whose state is in memory now.
    pub fn cached_len(&self) -> usize {
        self.keys.len()
    }

    /// Keys that have state, cached or evicted.
    pub fn len_with_evicted(&self) -> usize {
        self.keys.len() + self.evicted.len()
    }

    /// The state of `key` if it is cached (None for an evicted key; nothing is loaded).
    pub fn cached(&self, key: &str) -> Option<&S> {
        self.keys.get(key).map(|c| &c.state)
    }

    /// The state of `key`, reading it back from the store first if it was evicted.
    pub fn get_mut(&mut self, key: &str) -> Lookup<'_, S> {
        // The evicted set is checked first (it is disjoint from `keys`) so the cached
        // case is a single hash lookup that can be returned directly.
        let mut read_back = false;
        if !self.evicted.is_empty()
            && let Some(evicted) = self.evicted.take(key)
        {
            read_back = true;
            self.counts.read_back += 1;
            if !self.load(evicted) {
                return Lookup::Lost;
            }
        }
        match self.keys.get_mut(key) {
            Some(cached) => {
                self.counts.hits += u64::from(!read_back);
                Lookup::Found(Entry {
                    cached,
                    dirty: &mut self.dirty,
                })
            }
            None => {
                self.counts.new += 1;
                Lookup::New
            }
        }
    }

    /// Sets the state of `key` as a change, replacing any it has, cached or evicted.
    /// Meant for a key [`KeyCache::get_mut`] found `New` or `Lost`; `state` must not be
    /// empty.
    pub fn insert(&mut self, key: Arc<str>, state: S) {
        match self.keys.entry(MapKey::new(&key)) {
            hash_map::Entry::Occupied(mut o) => {
                let cached = o.get_mut();
                cached.state = state;
                mark_dirty(cached, &mut self.dirty);
            }
            hash_map::Entry::Vacant(v) => {
                let stored = !self.evicted.is_empty() && self.evicted.remove(&key);
                self.dirty.push(key.clone());
                v.insert(Cached {
                    key,
                    state,
                    dirty: true,
                    stored,
                    drained: 0,
                });
            }
        }
    }

    /// Drops the state of `key` (returned when it was cached); the store's copy, if it
    /// has one, is reported deleted at the next drain.
    pub fn remove(&mut self, key: &str) -> Option<S> {
        if let Some(cached) = self.keys.remove(key) {
            if cached.stored {
                self.removed.insert(cached.key);
            }
            return Some(cached.state);
        }
        if !self.evicted.is_empty()
            && let Some(key) = self.evicted.take(key)
        {
            self.removed.insert(key);
        }
        None
    }

    /// Sets `key` to a state the store already holds (recovery), replacing any it has.
    /// The key is then clean and counts as drained at epoch 0: evictable at any
    /// committed epoch. An empty `state` leaves the key without state. Returns the
    /// key as the cache shares it and what it held before, so the operator can replace
    /// its timers.
    pub fn restore(&mut self, key: &str, state: S) -> (Arc<str>, Replaced<S>) {
        let (key, replaced) = if let Some(cached) = self.keys.remove(key) {
            (cached.key, Replaced::Cached(cached.state))
        } else if let Some(key) = self.evicted.take(key) {
            (key, Replaced::Evicted)
        } else {
            (Arc::from(key), Replaced::Nothing)
        };
        if !self.removed.is_empty() {
            self.removed.remove(&key);
        }
        if !state.is_empty() {
            self.drain_order.push_front((0, key.clone()));
            self.keys.insert(
                MapKey::new(&key),
                Cached {
                    key: key.clone(),
                    state,
                    dirty: false,
                    stored: true,
                    drained: 0,
                },
            );
        }
        (key, replaced)
    }

    /// Calls `f(key, Some(&mut state))` for every key whose state changed since the
    /// previous drain and still has state, and `f(key, None)` for every such key whose
    /// stored state is now gone. Afterwards these keys are clean, and remembered as
    /// "written at `epoch`" (`epoch`s are increasing). Each changed key is reported
    /// once, in no particular order.
    ///
    /// `f` may change the state as it writes it (what the state knows of its stored
    /// form); a state it leaves empty has written its own deletion, and leaves the cache.
    pub fn drain(&mut self, epoch: u64, mut f: impl FnMut(&str, Option<&mut S>)) {
        self.last_drain = self.last_drain.max(epoch);
        for key in self.dirty.drain(..) {
            if let Some(c) = self.keys.get_mut(&*key)
                && c.dirty
            {
                c.dirty = false;
                c.stored = true;
                c.drained = epoch;
                f(&key, Some(&mut c.state));
                if c.state.is_empty() {
                    self.keys.remove(&*key);
                } else {
                    self.drain_order.push_back((epoch, key));
                }
            }
        }
        for key in self.removed.drain() {
            // A key that came back was reported above with its new state.
            if !self.keys.contains_key(&*key) {
                f(&key, None);
            }
        }
        // Keep the eviction queue proportional to the cache: drop entries superseded by
        // a later drain or whose key left the cache (amortised O(1) per entry).
        if self.drain_order.len() > 2 * self.keys.len() + 64 {
            let keys = &self.keys;
            self.drain_order
                .retain(|(epoch, key)| keys.get(&**key).is_some_and(|c| c.drained == *epoch));
        }
    }

    /// Evicts cached keys until at most `max_cached` remain, choosing only keys that
    /// are clean and whose last drain epoch is `<= committed_epoch` (their stored state
    /// is durable and current), least recently drained first. Returns how many were
    /// evicted. A no-op without a loader.
    pub fn evict(&mut self, max_cached: usize, committed_epoch: u64) -> usize {
        if self.loader.0.is_none() {
            return 0;
        }
        let mut evicted = 0;
        while self.keys.len() > max_cached {
            // Entries are in drain order, so once one is not committed, none further is.
            if self
                .drain_order
                .front()
                .is_none_or(|(epoch, _)| *epoch > committed_epoch)
            {
                break;
            }
            let Some((epoch, key)) = self.drain_order.pop_front() else {
                break;
            };
            let current = self
                .keys
                .get(&*key)
                .is_some_and(|c| !c.dirty && c.drained == epoch);
            if current {
                self.keys.remove(&*key);
                self.evicted.insert(key);
                evicted += 1;
            }
        }
        evicted
    }

    /// Reads an evicted key (already taken out of `evicted`) back into the cache;
    /// false when the store has no state for it.
    fn load(&mut self, key: Arc<str>) -> bool {
        let state = self.loader.0.as_mut().and_then(|l| l.load(&key));
        match state {
            Some(state) if !state.is_empty() => {
                self.drain_order.push_back((self.last_drain, key.clone()));
                self.keys.insert(
                    MapKey::new(&key),
                    Cached {
                        key,
                        state,
                        dirty: false,
                        stored: true,
                        drained: self.last_drain,
                    },
                );
                true
            }
            stored => {
                if stored.is_some() {
                    // An empty stored state is no state: have the store drop it.
                    self.removed.insert(key);
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Mutex;

    use proptest::prelude::*;

    use super::*;

    /// A test state; 0 is the empty state.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    struct V(u32);

    impl CacheState for V {
        fn is_empty(&self) -> bool {
            self.0 == 0
        }
    }

    /// The committed store a loader reads, and the keys it was asked for.
    #[derive(Clone, Default)]
    struct MapLoader {
        store: Arc<Mutex<HashMap<String, V>>>,
        loads: Arc<Mutex<Vec<String>>>,
    }

    impl KeyLoader<V> for MapLoader {
        fn load(&mut self, key: &str) -> Option<V> {
            self.loads.lock().unwrap().push(key.to_owned());
            self.store.lock().unwrap().get(key).copied()
        }
    }

    impl MapLoader {
        fn attached_to(cache: &mut KeyCache<V>) -> MapLoader {
            let loader = MapLoader::default();
            cache.set_loader(Box::new(loader.clone()));
            loader
        }

        /// Drains `cache` at `epoch` straight into the store (committed at once);
        /// returns the reported keys, sorted.
        fn drain(&self, cache: &mut KeyCache<V>, epoch: u64) -> Vec<(String, Option<u32>)> {
            let mut store = self.store.lock().unwrap();
            let reported = drain(cache, epoch);
            for (key, value) in &reported {
                match value {
                    Some(v) => store.insert(key.clone(), V(*v)),
                    None => store.remove(key),
                };
            }
            reported
        }

        fn loads(&self) -> Vec<String> {
            self.loads.lock().unwrap().clone()
        }
    }

    /// Drains `cache`; the reported keys, sorted, each asserted to be reported once.
    fn drain(cache: &mut KeyCache<V>, epoch: u64) -> Vec<(String, Option<u32>)> {
        let mut reported = Vec::new();
        cache.drain(epoch, |key, state| {
            reported.push((key.to_owned(), state.map(|v| v.0)));
        });
        reported.sort();
        let mut keys: Vec<&String> = reported.iter().map(|(k, _)| k).collect();
        keys.dedup();
        assert_eq!(keys.len(), reported.len(), "a key reported twice");
        reported
    }

    fn found(cache: &mut KeyCache<V>, key: &str) -> Option<u32> {
        match cache.get_mut(key) {
            Lookup::Found(entry) => Some(entry.state().0),
            Lookup::New => None,
            Lookup::Lost => panic!("{key} lost"),
        }
    }

    fn set(cache: &mut KeyCache<V>, key: &str, v: u32) {
        match cache.get_mut(key) {
            Lookup::Found(mut entry) => *entry.state_mut() = V(v),
            Lookup::New => cache.insert(Arc::from(key), V(v)),
            Lookup::Lost => panic!("{key} lost"),
        }
    }

    fn reported(keys: &[(&str, Option<u32>)]) -> Vec<(String, Option<u32>)> {
        keys.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    #[test]
    fn a_state_its_writer_empties_leaves_the_cache() {
        let mut cache = KeyCache::new();
        set(&mut cache, "a", 1);
        set(&mut cache, "b", 2);
        cache.drain(1, |key, state| {
            if key == "a" {
                *state.unwrap() = V(0);
            }
        });
        assert_eq!(cache.cached_len(), 1);
        assert_eq!(found(&mut cache, "a"), None);
        assert_eq!(found(&mut cache, "b"), Some(2));
        assert_eq!(drain(&mut cache, 2), vec![]);
    }

    #[test]
    fn drain_reports_each_changed_key_once_and_not_what_came_and_went() {
        let mut cache = KeyCache::new();
        set(&mut cache, "a", 1);
        set(&mut cache, "a", 2);
        set(&mut cache, "b", 1);
        assert_eq!(
            drain(&mut cache, 1),
            reported(&[("a", Some(2)), ("b", Some(1))])
        );
        assert_eq!(drain(&mut cache, 2), vec![]);
        // Reading marks nothing.
        assert_eq!(found(&mut cache, "a"), Some(2));
        // c appears and vanishes: never stored, never reported. b goes: reported.
        set(&mut cache, "c", 1);
        assert_eq!(cache.remove("c"), Some(V(1)));
        assert_eq!(cache.remove("b"), Some(V(1)));
        assert_eq!(cache.remove("nothing"), None);
        assert_eq!(drain(&mut cache, 3), reported(&[("b", None)]));
        // Gone and back between two drains: reported once, with its new state.
        cache.remove("a");
        set(&mut cache, "a", 5);
        cache.remove("a");
        set(&mut cache, "a", 6);
        assert_eq!(drain(&mut cache, 4), reported(&[("a", Some(6))]));
        // And gone, back, gone again: reported gone.
        cache.remove("a");
        set(&mut cache, "a", 7);
        cache.remove("a");
        assert_eq!(drain(&mut cache, 5), reported(&[("a", None)]));
        assert_eq!(cache.len_with_evicted(), 0);
    }

    #[test]
    fn new_keys_never_call_the_loader() {
        let mut cache = KeyCache::new();
        let loader = MapLoader::attached_to(&mut cache);
        set(&mut cache, "old", 1);
        loader.drain(&mut cache, 1);
        assert_eq!(cache.evict(0, 1), 1);
        for i in 0..50 {
            assert_eq!(found(&mut cache, &format!("new{i}")), None);
            set(&mut cache, &format!("new{i}"), 1);
        }
        assert!(loader.loads().is_empty());
        assert_eq!(found(&mut cache, "old"), Some(1));
        assert_eq!(loader.loads(), vec!["old".to_string()]);
        assert_eq!((cache.cached_len(), cache.len_with_evicted()), (51, 51));
        // Read back clean: nothing to report for it.
        assert!(drain(&mut cache, 2).iter().all(|(k, _)| k != "old"));
        // Two lookups per new key above (found, then set), one for "old" at first.
        assert_eq!(found(&mut cache, "old"), Some(1));
        assert_eq!(
            cache.counts(),
            CacheCounts {
                hits: 1,
                read_back: 1,
                new: 101
            }
        );
    }

    #[test]
    fn evict_takes_only_clean_committed_keys_least_recently_drained_first() {
        let mut cache = KeyCache::new();
        set(&mut cache, "x", 1);
        // Without a loader nothing is evicted.
        drain(&mut cache, 1);
        assert_eq!(cache.evict(0, u64::MAX), 0);
        let loader = MapLoader::attached_to(&mut cache);
        set(&mut cache, "y", 1);
        set(&mut cache, "z", 1);
        assert_eq!(cache.evict(0, u64::MAX), 1, "x only: y and z are dirty");
        assert_eq!(cache.cached("x"), None);
        loader.drain(&mut cache, 2);
        // Drained again at 3, so y is now the most recently drained.
        set(&mut cache, "y", 2);
        loader.drain(&mut cache, 3);
        assert_eq!(cache.evict(0, 1), 0, "drained at 2 and 3, committed 1");
        assert_eq!(cache.evict(1, 3), 1);
        assert_eq!(cache.cached("z"), None);
        assert_eq!(cache.cached("y"), Some(&V(2)));
        set(&mut cache, "y", 3);
        assert_eq!(cache.evict(0, u64::MAX), 0, "y is dirty");
        assert_eq!((cache.cached_len(), cache.len_with_evicted()), (1, 3));
        assert!(loader.loads().is_empty());
    }

    #[test]
    fn a_missing_or_empty_stored_state_is_lost() {
        let mut cache = KeyCache::new();
        let loader = MapLoader::attached_to(&mut cache);
        set(&mut cache, "gone", 1);
        set(&mut cache, "empty", 1);
        loader.drain(&mut cache, 1);
        assert_eq!(cache.evict(0, 1), 2);
        {
            let mut store = loader.store.lock().unwrap();
            store.remove("gone");
            store.insert("empty".into(), V(0));
        }
        assert!(matches!(cache.get_mut("gone"), Lookup::Lost));
        assert!(matches!(cache.get_mut("empty"), Lookup::Lost));
        assert_eq!(cache.len_with_evicted(), 0);
        // Asked once each; after that they are plain new keys.
        assert!(matches!(cache.get_mut("gone"), Lookup::New));
        assert_eq!(loader.loads().len(), 2);
        // The empty stored state is deleted; nothing is known to be stored for "gone".
        assert_eq!(drain(&mut cache, 2), reported(&[("empty", None)]));
    }

    #[test]
    fn removing_an_evicted_key_reports_it_without_loading_it() {
        let mut cache = KeyCache::new();
        let loader = MapLoader::attached_to(&mut cache);
        set(&mut cache, "k", 1);
        loader.drain(&mut cache, 1);
        assert_eq!(cache.evict(0, 1), 1);
        assert_eq!(cache.remove("k"), None);
        assert_eq!(cache.len_with_evicted(), 0);
        assert_eq!(drain(&mut cache, 2), reported(&[("k", None)]));
        assert!(loader.loads().is_empty());
    }

    #[test]
    fn inserting_over_an_evicted_key_replaces_it() {
        let mut cache = KeyCache::new();
        let loader = MapLoader::attached_to(&mut cache);
        set(&mut cache, "k", 1);
        loader.drain(&mut cache, 1);
        assert_eq!(cache.evict(0, 1), 1);
        cache.insert(Arc::from("k"), V(2));
        assert_eq!((cache.cached_len(), cache.len_with_evicted()), (1, 1));
        // The store had it, so its removal is reported.
        cache.remove("k");
        assert_eq!(drain(&mut cache, 2), reported(&[("k", None)]));
        assert!(loader.loads().is_empty());
    }

    #[test]
    fn restored_keys_are_clean_and_evictable_at_any_committed_epoch() {
        let mut cache = KeyCache::new();
        let loader = MapLoader::attached_to(&mut cache);
        let (key, replaced) = cache.restore("a", V(1));
        assert_eq!((&*key, replaced), ("a", Replaced::Nothing));
        set(&mut cache, "b", 1);
        loader.drain(&mut cache, 1);
        // a counts as drained at 0, before b.
        assert_eq!(cache.evict(1, 0), 1);
        assert_eq!(cache.cached("a"), None);
        assert_eq!(cache.restore("a", V(2)), (key, Replaced::Evicted));
        assert_eq!(cache.restore("a", V(3)).1, Replaced::Cached(V(2)));
        // A dirty key restored is clean.
        set(&mut cache, "b", 2);
        assert_eq!(cache.restore("b", V(4)).1, Replaced::Cached(V(2)));
        assert_eq!(drain(&mut cache, 2), vec![]);
        // An empty restore leaves no state, and nothing to report.
        cache.remove("a");
        cache.restore("a", V(0));
        assert_eq!((cache.cached("a"), cache.len_with_evicted()), (None, 1));
        assert_eq!(drain(&mut cache, 3), vec![]);
        assert!(loader.loads().is_empty());
    }

    #[test]
    fn the_eviction_queue_stays_proportional_to_the_cache() {
        let mut cache = KeyCache::new();
        let _loader = MapLoader::attached_to(&mut cache);
        for epoch in 1..1000 {
            set(&mut cache, "k", epoch as u32);
            drain(&mut cache, epoch);
            assert!(cache.drain_order.len() <= 2 * cache.cached_len() + 64);
        }
        assert_eq!(cache.evict(0, 999), 1);
    }

    /// Key `k`'s name: short ones, and ones just within and just beyond the inline limit
    /// (with a two-byte character), so that both kinds of [`MapKey`] are exercised.
    fn key_name(k: u8) -> String {
        match k % 4 {
            0 | 2 => format!("k{k}"),
            1 => format!("{k}é{}", "x".repeat(INLINE_KEY - 3)),
            _ => format!("{k}é{}", "x".repeat(INLINE_KEY - 2)),
        }
    }

    #[test]
    fn map_keys_hash_and_compare_as_the_str_they_hold_inline_or_shared() {
        use std::hash::BuildHasher as _;
        let names = [
            String::new(),
            "c-0001234".into(),
            key_name(1),
            key_name(3),
            "é".repeat(30),
        ];
        assert_eq!(
            names.iter().map(String::len).collect::<Vec<_>>(),
            [0, 9, INLINE_KEY, INLINE_KEY + 1, 60]
        );
        let hasher = std::collections::hash_map::RandomState::new();
        for name in &names {
            let key = MapKey::new(&Arc::from(name.as_str()));
            assert_eq!(
                matches!(key, MapKey::Inline { .. }),
                name.len() <= INLINE_KEY,
                "{name}"
            );
            assert_eq!(key.as_str(), name);
            assert_eq!(hasher.hash_one(&key), hasher.hash_one(name.as_str()));
        }
        let short = |s: &str| MapKey::new(&Arc::from(s));
        assert_ne!(short("ab"), short("ab\0"));
        assert_eq!(
            short(&names[4]),
            MapKey::Shared(Arc::from(names[4].as_str()))
        );
    }

    // ---- property test against a model of what the store holds ----

    #[derive(Debug, Clone)]
    enum Op {
        /// Sets a key through `get_mut`, or `insert` when it has no state.
        Set(u8, u32),
        /// `insert` directly, whatever the key has.
        Insert(u8, u32),
        Read(u8),
        Remove(u8),
        Drain,
        /// Commits the drain this many epochs before the latest one.
        Commit(u64),
        Evict(usize),
    }

    fn gen_op() -> impl Strategy<Value = Op> {
        let key = 0u8..8;
        prop_oneof![
            3 => (key.clone(), 1u32..100).prop_map(|(k, v)| Op::Set(k, v)),
            1 => (key.clone(), 1u32..100).prop_map(|(k, v)| Op::Insert(k, v)),
            3 => key.clone().prop_map(Op::Read),
            2 => key.prop_map(Op::Remove),
            2 => Just(Op::Drain),
            2 => (0u64..3).prop_map(Op::Commit),
            2 => (0usize..5).prop_map(Op::Evict),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        #[test]
        fn the_cache_behaves_like_its_state_over_the_committed_store(
            ops in prop::collection::vec(gen_op(), 0..120),
        ) {
            let mut cache = KeyCache::new();
            let loader = MapLoader::attached_to(&mut cache);
            // What the operator's states are.
            let mut model: BTreeMap<String, u32> = BTreeMap::new();
            // The store after each drain, by epoch (epoch 0: empty).
            let mut drained: Vec<BTreeMap<String, u32>> = vec![BTreeMap::new()];
            let mut committed = 0u64;
            // Nothing changed since the latest drain.
            let mut clean = true;
            for op in ops {
                let loads_before = loader.loads().len();
                match op {
                    Op::Set(k, v) => {
                        let k = key_name(k);
                        set(&mut cache, &k, v);
                        model.insert(k, v);
                        clean = false;
                    }
                    Op::Insert(k, v) => {
                        let k = key_name(k);
                        cache.insert(Arc::from(k.as_str()), V(v));
                        model.insert(k, v);
                        clean = false;
                    }
                    Op::Read(k) => {
                        let k = key_name(k);
                        prop_assert_eq!(found(&mut cache, &k), model.get(&k).copied());
                    }
                    Op::Remove(k) => {
                        let k = key_name(k);
                        let had = model.remove(&k);
                        if let Some(V(v)) = cache.remove(&k) {
                            prop_assert_eq!(Some(v), had);
                        }
                    }
                    Op::Drain => {
                        let epoch = drained.len() as u64;
                        let mut store = drained[drained.len() - 1].clone();
                        for (key, value) in drain(&mut cache, epoch) {
                            match value {
                                Some(v) => {
                                    store.insert(key, v);
                                }
                                None => {
                                    // Only what the store holds is reported gone.
                                    prop_assert!(store.remove(&key).is_some(), "{} never stored", key);
                                }
                            }
                        }
                        prop_assert_eq!(&store, &model);
                        drained.push(store);
                        clean = true;
                        prop_assert!(cache.drain_order.len() <= 2 * cache.cached_len() + 64);
                    }
                    Op::Commit(back) => {
                        let latest = drained.len() as u64 - 1;
                        committed = committed.max(latest.saturating_sub(back));
                        *loader.store.lock().unwrap() =
                            drained[committed as usize].clone().into_iter().map(|(k, v)| (k, V(v))).collect();
                    }
                    Op::Evict(max) => {
                        let before = cache.cached_len();
                        let n = cache.evict(max, committed);
                        prop_assert_eq!(cache.cached_len(), before - n);
                        prop_assert!(n == 0 || cache.cached_len() >= max);
                        if clean && committed == drained.len() as u64 - 1 {
                            // Everything cached is drained and committed: all may go.
                            prop_assert!(cache.cached_len() <= max);
                        }
                    }
                }
                // Brand-new keys never reach the loader, and no key is ever lost.
                for key in &loader.loads()[loads_before..] {
                    prop_assert!(model.contains_key(key), "{} loaded", key);
                }
                prop_assert_eq!(cache.len_with_evicted(), model.len());
                // Every evicted key's committed copy is its current state.
                let store = &drained[committed as usize];
                for (key, v) in &model {
                    if cache.cached(key).is_none() {
                        prop_assert_eq!(store.get(key), Some(v), "{} evicted", key);
                    }
                }
            }
        }
    }
}
