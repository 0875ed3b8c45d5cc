//! Deterministic synthetic workload generator (`braid gen`): customer sessions on the
//! journey topics, fulfilment parts of their orders, and the disorder, late,
//! duplicate and poison records a stream processor must cope with.
//!
//! The generator is an [`Iterator`] of [`GenRecord`]s in *arrival order*, the order a
//! producer would append them to the log. It runs a discrete-event simulation:
//!
//! 1. a min-heap of customers keyed by the event time of their next event (one
//!    pending event per customer) yields journey events in event-time order; the
//!    time of the last one is the simulation clock;
//! 2. each event is rendered once and given an arrival time: event time plus a
//!    uniform delay in `[0, disorder_ms]`, or, for a late record, 30 to 120 minutes
//!    past the disorder bound of the moment its session or order correlation has
//!    closed (so a watermark-driven engine sees it as late, not as a bridging
//!    event); duplicates, poison records and the fulfilment parts of an order get
//!    their own arrival times;
//! 3. a reorder heap keyed by (arrival time, push order) releases a record once the
//!    clock has reached its arrival time. Every record pushed later has an event time
//!    at or after the clock, hence an arrival time too, so records leave in
//!    non-decreasing arrival order, and an on-time record is never preceded by an
//!    event more than `disorder_ms` younger than itself.
//!
//! Invariants:
//! - Same configuration (seed included) ⇒ byte-identical stream, on every platform:
//!   ChaCha8 randomness and integer-only sampling.
//! - Exactly `events` well-formed journey events (`Normal` or `Late`), each with a
//!   unique `event_id`. Duplicates re-send one of them byte for byte; poison records
//!   are extra records next to the event they were generated with (see
//!   `docs/datagen.md`), so they never alter the simulated sessions.
//! - Memory is O(customers + records in flight), never O(events): the customer heap
//!   holds one entry and the customer table a few dozen bytes per customer, and the
//!   reorder heap holds only records whose arrival time is still ahead of the clock.
//!   Their number is bounded by the event rate times the longest delay (on-time:
//!   `disorder_ms`; fulfilment parts: 4 h, delayed ones 48 h; late records: 2.5 h
//!   after their session, 11 h after their order), which depends on `customers` and
//!   the fractions but not on `events`.

mod config;
mod model;
mod render;
mod summary;

pub use config::{
    DEFAULT_START_MS, GenConfig, GenError, MAX_CUSTOMERS, MAX_DISORDER_MS, MAX_EVENTS_PER_CUSTOMER,
    MAX_START_MS,
};
pub use summary::{ClassCounts, GenSummary, PoisonCounts, TopicCounts};

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

use rand::distr::{Bernoulli, Distribution};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use model::{Body, Customer, Event, Order};

pub const PAGE_VIEWED: &str = "page.viewed";
pub const CART_UPDATED: &str = "cart.updated";
pub const ORDER_PLACED: &str = "order.placed";
pub const PAYMENT_PROCESSED: &str = "payment.processed";
pub const INVENTORY_RESERVED: &str = "inventory.reserved";
pub const SHIPMENT_CREATED: &str = "shipment.created";

/// Topics of a customer journey, keyed by `customer_id`.
pub const JOURNEY_TOPICS: [&str; 3] = [PAGE_VIEWED, CART_UPDATED, ORDER_PLACED];
/// Topics of an order's fulfilment, keyed by `order_id`.
pub const FULFILMENT_TOPICS: [&str; 3] = [PAYMENT_PROCESSED, INVENTORY_RESERVED, SHIPMENT_CREATED];

/// A late record arrives this long after the disorder bound of the moment everything
/// it could join has closed, at least …
pub const LATE_MIN_MS: i64 = 30 * 60_000;
/// … and at most.
pub const LATE_MAX_MS: i64 = 120 * 60_000;

/// What a generated record is meant to exercise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordClass {
    /// Well-formed, arriving within the disorder bound.
    Normal,
    /// Well-formed, arriving 30 to 120 minutes (plus `disorder_ms`) after everything
    /// it could join has closed: for a journey event, its session's last event plus
    /// 30 minutes; for a fulfilment part, its order plus 9 hours (4 h of parts plus a
    /// `complete` timeout under 5 h), or its own time plus 5 hours if later.
    Late,
    /// A byte-identical re-send of an earlier `Normal` record, within the disorder bound.
    Duplicate,
    /// Malformed in the given way; the record key is the intended customer or order id.
    Poison(PoisonKind),
}

/// The ways a poison record is broken; each has exactly one defect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PoisonKind {
    /// Not JSON: a log line, an HTML error page, binary noise or form encoding.
    NotJson,
    /// A well-formed record cut short: a strict prefix, never valid JSON.
    Truncated,
    /// Valid JSON without the key field (`customer_id` or `order_id`).
    MissingKey,
    /// Valid JSON without `ts`.
    MissingTime,
    /// `ts` is a string in a non-RFC 3339 format (`05/01/2026 09:13:27`, no offset,
    /// an RFC 2822 date, month 13).
    BadTime,
    /// The key field is an object (`{"id": "c-000042"}`), neither string nor integer.
    WrongKeyType,
}

impl PoisonKind {
    pub const ALL: [PoisonKind; 6] = [
        PoisonKind::NotJson,
        PoisonKind::Truncated,
        PoisonKind::MissingKey,
        PoisonKind::MissingTime,
        PoisonKind::BadTime,
        PoisonKind::WrongKeyType,
    ];
}

/// One record to append to a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenRecord {
    /// One of [`JOURNEY_TOPICS`] or [`FULFILMENT_TOPICS`].
    pub topic: &'static str,
    /// Partitioning key: the customer id on journey topics, the order id on fulfilment
    /// topics — for poison records too, as the producer meant it. Always set.
    pub key: Option<String>,
    /// The JSON payload (or the broken bytes of a poison record).
    pub value: Vec<u8>,
    pub class: RecordClass,
    /// Simulated event time, epoch ms (for poison records: the time it was meant to carry).
    pub event_ms: i64,
    /// Simulated arrival time, epoch ms; non-decreasing along the stream.
    pub arrival_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Topic {
    PageViewed,
    CartUpdated,
    OrderPlaced,
    PaymentProcessed,
    InventoryReserved,
    ShipmentCreated,
}

impl Topic {
    fn of(body: &Body) -> Topic {
        match body {
            Body::PageView { .. } => Topic::PageViewed,
            Body::CartUpdate { .. } => Topic::CartUpdated,
            Body::OrderPlaced(_) => Topic::OrderPlaced,
            Body::Payment { .. } => Topic::PaymentProcessed,
            Body::Inventory { .. } => Topic::InventoryReserved,
            Body::Shipment { .. } => Topic::ShipmentCreated,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Topic::PageViewed => PAGE_VIEWED,
            Topic::CartUpdated => CART_UPDATED,
            Topic::OrderPlaced => ORDER_PLACED,
            Topic::PaymentProcessed => PAYMENT_PROCESSED,
            Topic::InventoryReserved => INVENTORY_RESERVED,
            Topic::ShipmentCreated => SHIPMENT_CREATED,
        }
    }

    fn is_journey(self) -> bool {
        matches!(
            self,
            Topic::PageViewed | Topic::CartUpdated | Topic::OrderPlaced
        )
    }
}

/// What becomes of an event beyond its own rendering.
#[derive(Debug, Clone, Copy)]
struct Fate {
    /// When everything the event could join has closed, for a session gap of
    /// [`model::SESSION_GAP_MS`] or a `complete` timeout below
    /// [`model::MAX_COMPLETE_TIMEOUT_MS`]: a late copy arrives well after this.
    closed: i64,
    /// For an order: how many of its parts will never be sent.
    missing_parts: u8,
    /// For a part: whether it is one of the much delayed ones.
    delayed: bool,
}

/// A rendered record waiting for the clock to reach its arrival time.
struct InFlight {
    /// Push order: breaks arrival-time ties so the stream stays deterministic and a
    /// duplicate never overtakes its original.
    push: u64,
    topic: Topic,
    /// For an order: how many of its parts will never be sent.
    missing_parts: u8,
    /// For a part: whether it is one of the much delayed ones.
    delayed: bool,
    record: GenRecord,
}

impl InFlight {
    fn sort_key(&self) -> (i64, u64) {
        (self.record.arrival_ms, self.push)
    }
}

impl Ord for InFlight {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest arrival must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        other.sort_key().cmp(&self.sort_key())
    }
}

impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        self.sort_key() == other.sort_key()
    }
}

impl Eq for InFlight {}

/// A priority queue as two binary heaps: a small, hot one for items due soon and a
/// large one for items due much later. Most traffic goes through the small heap,
/// which stays in cache; the large heap (customers between sessions, fulfilment
/// parts, late records) is touched a few times per session or order. The order of
/// items is exactly that of a single heap: `pop` takes the greater of both tops.
struct SplitQueue<T> {
    near: BinaryHeap<T>,
    far: BinaryHeap<T>,
}

impl<T: Ord> Default for SplitQueue<T> {
    fn default() -> Self {
        SplitQueue {
            near: BinaryHeap::new(),
            far: BinaryHeap::new(),
        }
    }
}

impl<T: Ord> SplitQueue<T> {
    fn push(&mut self, item: T, near: bool) {
        if near {
            self.near.push(item)
        } else {
            self.far.push(item)
        }
    }

    fn heap_of_top(&mut self) -> &mut BinaryHeap<T> {
        match (self.near.peek(), self.far.peek()) {
            (Some(n), Some(f)) if f > n => &mut self.far,
            (None, Some(_)) => &mut self.far,
            _ => &mut self.near,
        }
    }

    fn peek(&mut self) -> Option<&T> {
        self.heap_of_top().peek()
    }

    fn pop(&mut self) -> Option<T> {
        self.heap_of_top().pop()
    }

    fn len(&self) -> usize {
        self.near.len() + self.far.len()
    }
}

/// The running simulation; iterate it to get the records in arrival order.
pub struct Generator {
    config: GenConfig,
    rng: ChaCha8Rng,
    late: Bernoulli,
    duplicate: Bernoulli,
    poison: Bernoulli,
    missing: Bernoulli,
    delayed: Bernoulli,
    customers: Vec<Customer>,
    /// (next event time, customer index), earliest first; near: customers inside a
    /// session, far: customers between sessions.
    schedule: SplitQueue<Reverse<(i64, u32)>>,
    /// Near: records due within the disorder bound; far: late records and parts.
    in_flight: SplitQueue<InFlight>,
    /// Event time of the latest journey event simulated.
    clock: i64,
    /// Journey events simulated so far.
    generated: u64,
    next_seq: u64,
    next_order: u64,
    pushes: u64,
    summary: GenSummary,
}

impl Generator {
    /// Sets up the simulation of a validated configuration: O(customers).
    fn new(config: GenConfig) -> Result<Generator, GenError> {
        let chance = |knob: &'static str, value: f64| {
            Bernoulli::new(value).map_err(|_| GenError::Fraction { knob, value })
        };
        let late = chance("late_fraction", config.late_fraction)?;
        let duplicate = chance("duplicate_fraction", config.duplicate_fraction)?;
        let poison = chance("poison_fraction", config.poison_fraction)?;
        let missing = chance("missing_part_fraction", config.missing_part_fraction)?;
        let delayed = chance("delayed_part_fraction", config.delayed_part_fraction)?;

        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        // `validate` bounds `customers` by MAX_CUSTOMERS, far below u32::MAX.
        let count = config.customers as u32;
        let mut customers = Vec::with_capacity(count as usize);
        let mut first = Vec::with_capacity(count as usize);
        for index in 0..count {
            customers.push(Customer::new(&mut rng));
            first.push((model::first_session_offset(&mut rng), index));
        }
        // Shift so that the earliest first event is exactly `start`.
        let earliest = first.iter().map(|f| f.0).min().unwrap_or(0);
        let idle = first
            .into_iter()
            .map(|(offset, index)| Reverse((config.start + offset - earliest, index)))
            .collect();
        Ok(Generator {
            rng,
            late,
            duplicate,
            poison,
            missing,
            delayed,
            customers,
            schedule: SplitQueue {
                near: BinaryHeap::new(),
                far: idle,
            },
            in_flight: SplitQueue::default(),
            clock: config.start,
            generated: 0,
            next_seq: 0,
            next_order: 0,
            pushes: 0,
            summary: GenSummary::default(),
            config,
        })
    }

    /// Counts of the records emitted so far.
    pub fn summary(&self) -> &GenSummary {
        &self.summary
    }

    pub fn config(&self) -> &GenConfig {
        &self.config
    }

    /// Records rendered but not yet emitted: the generator's memory beyond its
    /// per-customer state.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Simulates the next journey event and queues its records.
    fn step(&mut self) {
        let Some(Reverse((ts, index))) = self.schedule.pop() else {
            // Unreachable: there is at least one customer and each is rescheduled.
            self.generated = self.config.events;
            return;
        };
        self.clock = ts;
        self.generated += 1;
        let customer = &mut self.customers[index as usize];
        let body = customer.next_body(index + 1, &mut self.rng, &mut self.next_order);
        let format = customer.ts_format(&mut self.rng);
        let order = match &body {
            Body::OrderPlaced(order) => Some(*order),
            _ => None,
        };
        // A late journey event arrives after its session has closed.
        let closed = customer.session_end(ts) + model::SESSION_GAP_MS;
        let gap = customer.advance(&mut self.rng);
        let in_session = gap <= model::MAX_INSIDE_GAP_MS;
        self.schedule.push(Reverse((ts + gap, index)), in_session);
        let event = Event {
            seq: self.take_seq(),
            ts,
            format,
            body,
        };
        let fate = Fate {
            closed,
            missing_parts: 0,
            delayed: false,
        };
        match order {
            Some(order) if self.config.fulfilment => self.emit_order(event, order, fate),
            _ => self.emit(event, fate),
        }
    }

    fn emit_order(&mut self, event: Event, order: Order, fate: Fate) {
        // Parts are decided first: the order's record carries how many never come.
        let mut parts = [None; 3];
        let mut missing = 0;
        for (part, slot) in parts.iter_mut().enumerate() {
            if self.missing.sample(&mut self.rng) {
                missing += 1;
                continue;
            }
            let delayed = self.delayed.sample(&mut self.rng);
            *slot = Some((
                event.ts + model::part_delay(&mut self.rng, part, delayed),
                delayed,
            ));
        }
        let order_ts = event.ts;
        let fate = Fate {
            missing_parts: missing,
            ..fate
        };
        self.emit(event, fate);
        for (part, slot) in parts.into_iter().enumerate() {
            let Some((ts, delayed)) = slot else { continue };
            // The order's correlation has timed out by then, whatever its first part
            // and timeout; a delayed part's own window as well.
            let closed =
                (order_ts + model::MAX_PART_DELAY_MS).max(ts) + model::MAX_COMPLETE_TIMEOUT_MS;
            let body = model::part_body(order, part, &mut self.rng);
            let format = model::backend_ts_format(&mut self.rng);
            let event = Event {
                seq: self.take_seq(),
                ts,
                format,
                body,
            };
            let fate = Fate {
                closed,
                missing_parts: 0,
                delayed,
            };
            self.emit(event, fate);
        }
    }

    /// Renders a well-formed event and queues it with its duplicate and poison
    /// companions, if the dice say so.
    fn emit(&mut self, mut event: Event, fate: Fate) {
        let topic = Topic::of(&event.body);
        let key = render::key(&event.body);
        let mut value = Vec::with_capacity(render::VALUE_CAPACITY);
        render::render(&event, &mut value);
        let ts = event.ts;
        // `validate` bounds disorder_ms by one day.
        let bound = ts + self.config.disorder_ms as i64;
        let late = self.late.sample(&mut self.rng);
        let (class, arrival) = if late {
            let delay = self.rng.random_range(LATE_MIN_MS..=LATE_MAX_MS);
            let bound_after_close = fate.closed + self.config.disorder_ms as i64;
            (RecordClass::Late, bound_after_close + delay)
        } else {
            (RecordClass::Normal, self.rng.random_range(ts..=bound))
        };
        let duplicate = (!late && self.duplicate.sample(&mut self.rng)).then(|| GenRecord {
            topic: topic.name(),
            key: Some(key.clone()),
            value: value.clone(),
            class: RecordClass::Duplicate,
            event_ms: ts,
            arrival_ms: self.rng.random_range(arrival..=bound),
        });
        let poison = if self.poison.sample(&mut self.rng) {
            let kind =
                PoisonKind::ALL[self.rng.random_range(0..PoisonKind::ALL.len() as u32) as usize];
            event.seq = self.take_seq();
            let mut bad = Vec::with_capacity(render::VALUE_CAPACITY);
            render::render_poison(&event, kind, &mut self.rng, &mut bad);
            Some(GenRecord {
                topic: topic.name(),
                key: Some(key.clone()),
                value: bad,
                class: RecordClass::Poison(kind),
                event_ms: ts,
                arrival_ms: self.rng.random_range(ts..=bound),
            })
        } else {
            None
        };
        let record = GenRecord {
            topic: topic.name(),
            key: Some(key),
            value,
            class,
            event_ms: ts,
            arrival_ms: arrival,
        };
        self.push(topic, fate.missing_parts, fate.delayed, record);
        for extra in [duplicate, poison].into_iter().flatten() {
            self.push(topic, 0, false, extra);
        }
    }

    fn push(&mut self, topic: Topic, missing_parts: u8, delayed: bool, record: GenRecord) {
        self.pushes += 1;
        let push = self.pushes;
        // `validate` bounds disorder_ms by one day.
        let near = record.arrival_ms <= self.clock + self.config.disorder_ms as i64;
        self.in_flight.push(
            InFlight {
                push,
                topic,
                missing_parts,
                delayed,
                record,
            },
            near,
        );
    }

    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }
}

impl Iterator for Generator {
    type Item = GenRecord;

    fn next(&mut self) -> Option<GenRecord> {
        loop {
            let done = self.generated >= self.config.events;
            if let Some(next) = self.in_flight.peek()
                && (done || next.record.arrival_ms <= self.clock)
            {
                let flight = self.in_flight.pop()?;
                self.summary.count(&flight);
                return Some(flight.record);
            }
            if done {
                return None;
            }
            self.step();
        }
    }
}

impl std::iter::FusedIterator for Generator {}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::sync::OnceLock;

    use chrono::DateTime;
    use proptest::prelude::*;
    use serde_json::Value;

    use super::*;

    const MINUTE: i64 = 60_000;

    /// How a consumer following SPEC §3 "Decoding" sees a record.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum Failure {
        NotJson,
        MissingKey,
        KeyType,
        MissingTime,
        BadTime,
    }

    #[derive(Debug)]
    struct Decoded {
        key: String,
        ts: i64,
        id: Option<String>,
        json: Value,
    }

    fn key_field(topic: &str) -> &'static str {
        if JOURNEY_TOPICS.contains(&topic) {
            "customer_id"
        } else {
            "order_id"
        }
    }

    /// A reference decoder: key string or integer, `ts` RFC 3339 or integer millis.
    fn decode(record: &GenRecord) -> Result<Decoded, Failure> {
        let json: Value = serde_json::from_slice(&record.value).map_err(|_| Failure::NotJson)?;
        let key = match json.get(key_field(record.topic)) {
            None => return Err(Failure::MissingKey),
            Some(Value::String(s)) => s.clone(),
            Some(Value::Number(n)) if n.is_i64() || n.is_u64() => n.to_string(),
            Some(_) => return Err(Failure::KeyType),
        };
        let ts = match json.get("ts") {
            None => return Err(Failure::MissingTime),
            Some(Value::Number(n)) => n.as_i64().ok_or(Failure::BadTime)?,
            Some(Value::String(s)) => DateTime::parse_from_rfc3339(s)
                .map_err(|_| Failure::BadTime)?
                .timestamp_millis(),
            Some(_) => return Err(Failure::BadTime),
        };
        let id = json
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        Ok(Decoded { key, ts, id, json })
    }

    fn expected_failure(kind: PoisonKind) -> Failure {
        match kind {
            PoisonKind::NotJson | PoisonKind::Truncated => Failure::NotJson,
            PoisonKind::MissingKey => Failure::MissingKey,
            PoisonKind::MissingTime => Failure::MissingTime,
            PoisonKind::BadTime => Failure::BadTime,
            PoisonKind::WrongKeyType => Failure::KeyType,
        }
    }

    fn well_formed(class: RecordClass) -> bool {
        !matches!(class, RecordClass::Poison(_))
    }

    fn run(config: GenConfig) -> (Vec<GenRecord>, GenSummary) {
        let mut generator = config.build().expect("valid config");
        let records: Vec<GenRecord> = generator.by_ref().collect();
        assert_eq!(generator.next(), None, "fused");
        (records, generator.summary().clone())
    }

    fn sample_config() -> GenConfig {
        GenConfig {
            seed: 11,
            customers: 2_000,
            events: 100_000,
            late_fraction: 0.03,
            duplicate_fraction: 0.02,
            poison_fraction: 0.01,
            missing_part_fraction: 0.1,
            delayed_part_fraction: 0.05,
            ..GenConfig::default()
        }
    }

    /// One 100K-event run shared by the stream tests (generating it is the slow part).
    fn sample() -> &'static (Vec<GenRecord>, GenSummary) {
        static SAMPLE: OnceLock<(Vec<GenRecord>, GenSummary)> = OnceLock::new();
        SAMPLE.get_or_init(|| run(sample_config()))
    }

    /// Binomial count within five standard deviations of its expectation.
    fn assert_rate(what: &str, hits: u64, trials: u64, p: f64) {
        let expected = trials as f64 * p;
        let sigma = (expected * (1.0 - p)).sqrt();
        assert!(
            (hits as f64 - expected).abs() <= 5.0 * sigma + 1.0,
            "{what}: {hits} of {trials}, expected about {expected:.0}"
        );
    }

    /// The summary a reader of the stream would compute.
    fn recount(records: &[GenRecord], fulfilment: bool) -> GenSummary {
        let mut s = GenSummary::default();
        let mut order_times = HashMap::new();
        for r in records {
            if r.topic == ORDER_PLACED && well_formed(r.class) && r.class != RecordClass::Duplicate
            {
                let order_id = decode(r).expect("well-formed").json["order_id"].clone();
                order_times.insert(order_id, r.event_ms);
            }
        }
        for r in records {
            let topic = match r.topic {
                PAGE_VIEWED => Topic::PageViewed,
                CART_UPDATED => Topic::CartUpdated,
                ORDER_PLACED => Topic::OrderPlaced,
                PAYMENT_PROCESSED => Topic::PaymentProcessed,
                INVENTORY_RESERVED => Topic::InventoryReserved,
                other => {
                    assert_eq!(other, SHIPMENT_CREATED);
                    Topic::ShipmentCreated
                }
            };
            let delayed = !topic.is_journey()
                && well_formed(r.class)
                && r.class != RecordClass::Duplicate
                && {
                    let order_id = &decode(r).expect("well-formed").json["order_id"];
                    r.event_ms - order_times[order_id] >= model::MIN_DELAYED_PART_MS
                };
            let flight = InFlight {
                push: 0,
                topic,
                missing_parts: 0,
                delayed,
                record: r.clone(),
            };
            s.count(&flight);
        }
        if fulfilment {
            s.missing_parts = 3 * s.orders - s.fulfilment_parts;
        }
        s
    }

    /// A late record as seen in the stream.
    struct LateSeen {
        topic: &'static str,
        key: String,
        ts: i64,
        arrival: i64,
        /// Watermark (`out_of_orderness = disorder_ms`) of a reader when it arrives.
        watermark: i64,
    }

    /// Properties every generated stream has, whatever the knobs. Returns, for every
    /// late record, how far the watermark was past the close of what it could have
    /// joined (negative: not past).
    fn check_stream(config: &GenConfig, records: &[GenRecord], summary: &GenSummary) -> Vec<i64> {
        let disorder = config.disorder_ms as i64;
        assert_eq!(summary.journey_events, config.events);
        assert_eq!(&recount(records, config.fulfilment), summary);

        let mut max_ts = i64::MIN;
        let mut last_arrival = i64::MIN;
        let mut originals: HashMap<String, &[u8]> = HashMap::new();
        let mut sessions: HashMap<String, Vec<i64>> = HashMap::new();
        let mut orders: HashMap<String, i64> = HashMap::new();
        let mut lates = Vec::new();
        for r in records {
            assert!(r.arrival_ms >= last_arrival, "arrival order");
            last_arrival = r.arrival_ms;
            let key = r.key.as_deref().expect("every record is keyed");
            match (r.class, decode(r)) {
                (RecordClass::Poison(kind), Err(failure)) => {
                    assert_eq!(failure, expected_failure(kind), "{kind:?}");
                    assert!(r.arrival_ms - r.event_ms <= disorder);
                }
                (RecordClass::Poison(kind), Ok(d)) => {
                    panic!("{kind:?} poison decoded: {d:?}")
                }
                (class, Err(failure)) => panic!("{class:?} record fails with {failure:?}"),
                (class, Ok(d)) => {
                    assert_eq!(d.key, key);
                    assert_eq!(d.ts, r.event_ms);
                    let id = d.id.expect("event_id");
                    if class == RecordClass::Late {
                        lates.push(LateSeen {
                            topic: r.topic,
                            key: d.key.clone(),
                            ts: d.ts,
                            arrival: r.arrival_ms,
                            watermark: max_ts.saturating_sub(disorder),
                        });
                    } else {
                        // The disorder bound: nothing seen so far is younger by more.
                        let inversion = max_ts.saturating_sub(r.event_ms);
                        assert!(inversion <= disorder, "inversion {inversion} > {disorder}");
                        assert!((0..=disorder).contains(&(r.arrival_ms - r.event_ms)));
                    }
                    max_ts = max_ts.max(r.event_ms);
                    if class == RecordClass::Duplicate {
                        let original = originals.get(&id).expect("duplicate after its original");
                        assert_eq!(*original, &r.value[..], "duplicates are byte-identical");
                    } else {
                        let previous = originals.insert(id.clone(), &r.value);
                        assert!(previous.is_none(), "event id {id} reused");
                        if r.topic == ORDER_PLACED {
                            let order_id = d.json["order_id"].as_str().expect("order_id");
                            orders.insert(order_id.to_owned(), d.ts);
                        }
                        if JOURNEY_TOPICS.contains(&r.topic) {
                            sessions.entry(d.key).or_default().push(d.ts);
                        }
                    }
                }
            }
        }
        for (customer, times) in &mut sessions {
            times.sort_unstable();
            for pair in times.windows(2) {
                let gap = pair[1] - pair[0];
                assert!(
                    gap <= 25 * MINUTE || gap > 30 * MINUTE,
                    "{customer}: gap of {gap} ms between {} and {}",
                    pair[0],
                    pair[1]
                );
            }
        }
        let mut margins = Vec::new();
        for late in lates {
            // A customer's last session may be cut short by the end of the stream, after
            // the late record was timed for its planned end: only a lower bound then.
            let (closed, exact) = if JOURNEY_TOPICS.contains(&late.topic) {
                let times = &sessions[&late.key];
                let mut i = times
                    .binary_search(&late.ts)
                    .expect("late event is simulated");
                while i + 1 < times.len() && times[i + 1] - times[i] <= 30 * MINUTE {
                    i += 1;
                }
                (times[i] + 30 * MINUTE, i + 1 < times.len())
            } else {
                let order_ts = orders[&late.key];
                (
                    (order_ts + 4 * 60 * MINUTE).max(late.ts) + 5 * 60 * MINUTE,
                    true,
                )
            };
            let delay = late.arrival - disorder - closed;
            assert!(delay >= LATE_MIN_MS, "{delay}");
            assert!(!exact || delay <= LATE_MAX_MS, "{delay}");
            // Before any watermark (a stream of one event) the margin is meaningless.
            margins.push(late.watermark.saturating_sub(closed));
        }
        margins
    }

    #[test]
    fn sample_stream_has_every_property() {
        let (records, summary) = sample();
        let margins = check_stream(&sample_config(), records, summary);
        // In a busy stream a late record arrives well behind the watermark, after the
        // session or correlation it belongs to has closed. Only the tail, drained after
        // the last journey event, lacks the traffic that moves a watermark.
        let last_event = records
            .iter()
            .filter(|r| JOURNEY_TOPICS.contains(&r.topic) && well_formed(r.class))
            .map(|r| r.event_ms)
            .max()
            .expect("events");
        let body: Vec<i64> = records
            .iter()
            .filter(|r| r.class == RecordClass::Late)
            .zip(&margins)
            .filter(|(r, _)| r.arrival_ms <= last_event)
            .map(|(_, &m)| m)
            .collect();
        assert!(
            body.len() as f64 > 0.9 * margins.len() as f64,
            "{} of {}",
            body.len(),
            margins.len()
        );
        let least = body.iter().min().expect("late records");
        assert!(
            *least > 25 * MINUTE,
            "a late record arrived only {least} ms past the close"
        );
    }

    #[test]
    fn sample_fractions_match_the_knobs() {
        let (_, s) = sample();
        let c = sample_config();
        let well_formed = s.journey_events + s.fulfilment_parts;
        assert_rate("late", s.classes.late, well_formed, c.late_fraction);
        assert_rate(
            "duplicate",
            s.classes.duplicate,
            s.classes.normal,
            c.duplicate_fraction,
        );
        assert_rate("poison", s.classes.poison, well_formed, c.poison_fraction);
        assert_rate(
            "missing parts",
            s.missing_parts,
            3 * s.orders,
            c.missing_part_fraction,
        );
        assert_rate(
            "delayed parts",
            s.delayed_parts,
            s.fulfilment_parts,
            c.delayed_part_fraction,
        );
        let p = s.poison;
        for (kind, n) in [
            ("not_json", p.not_json),
            ("truncated", p.truncated),
            ("missing_key", p.missing_key),
            ("missing_time", p.missing_time),
            ("bad_time", p.bad_time),
            ("wrong_key_type", p.wrong_key_type),
        ] {
            assert_rate(kind, n, s.classes.poison, 1.0 / 6.0);
        }
        // Shop-like mix: mostly page views, some cart updates, a few orders.
        let views = s.topics.page_viewed.normal + s.topics.page_viewed.late;
        assert!(
            (0.65..0.85).contains(&(views as f64 / s.journey_events as f64)),
            "{views}"
        );
        assert!(
            (0.01..0.06).contains(&(s.orders as f64 / s.journey_events as f64)),
            "{}",
            s.orders
        );
    }

    #[test]
    fn sample_has_sessions_and_varied_timestamps() {
        let (records, _) = sample();
        let (mut utc, mut offset, mut millis) = (0, 0, 0);
        let mut offsets = HashSet::new();
        for r in records.iter().filter(|r| r.class == RecordClass::Normal) {
            match &decode(r).expect("well-formed").json["ts"] {
                Value::Number(_) => millis += 1,
                Value::String(s) if s.ends_with('Z') => utc += 1,
                Value::String(s) => {
                    offset += 1;
                    offsets.insert(s[s.len() - 6..].to_owned());
                }
                other => panic!("ts {other}"),
            }
        }
        let total = (utc + offset + millis) as f64;
        assert!(offset as f64 / total > 0.5, "{offset} with offsets");
        assert!(
            (0.05..0.3).contains(&(millis as f64 / total)),
            "{millis} epoch millis"
        );
        assert!(utc as f64 / total > 0.1, "{utc} UTC");
        assert!(offsets.len() >= 8, "{offsets:?}");
        assert!(
            offsets.contains("+00:00") && offsets.contains("+05:30") && offsets.contains("-08:00")
        );
    }

    #[test]
    fn sample_record_sizes_are_realistic() {
        let (records, _) = sample();
        let mut sizes: HashMap<&str, (usize, usize)> = HashMap::new();
        for r in records.iter().filter(|r| well_formed(r.class)) {
            let entry = sizes.entry(r.topic).or_default();
            entry.0 += r.value.len();
            entry.1 += 1;
        }
        let (bytes, count) = sizes.values().fold((0, 0), |a, s| (a.0 + s.0, a.1 + s.1));
        assert!(
            (200..=350).contains(&(bytes / count)),
            "mean {}",
            bytes / count
        );
        for (topic, (bytes, count)) in sizes {
            assert!(
                (180..=400).contains(&(bytes / count)),
                "{topic}: mean {}",
                bytes / count
            );
        }
    }

    #[test]
    fn sample_parts_reference_their_orders() {
        let (records, _) = sample();
        let mut orders = HashMap::new();
        for r in records
            .iter()
            .filter(|r| r.topic == ORDER_PLACED && r.class != RecordClass::Duplicate)
        {
            if let Ok(d) = decode(r) {
                let id = d.json["order_id"].as_str().expect("order_id").to_owned();
                assert!(orders.insert(id, d).is_none(), "order ids are unique");
            }
        }
        let mut parts_per_order: HashMap<String, HashSet<&str>> = HashMap::new();
        for r in records
            .iter()
            .filter(|r| FULFILMENT_TOPICS.contains(&r.topic) && well_formed(r.class))
        {
            let d = decode(r).expect("well-formed");
            let order = orders
                .get(&d.key)
                .unwrap_or_else(|| panic!("{} has no order", d.key));
            let delay = d.ts - order.ts;
            assert!(
                (1..=model::MAX_PART_DELAY_MS).contains(&delay)
                    || (model::MIN_DELAYED_PART_MS..=model::MAX_DELAYED_PART_MS).contains(&delay),
                "{} {}: {delay}",
                r.topic,
                d.key
            );
            if r.topic == PAYMENT_PROCESSED {
                assert_eq!(d.json["amount"], order.json["total"]);
                assert_eq!(d.json["customer_id"], order.json["customer_id"]);
            }
            if r.class != RecordClass::Duplicate {
                let seen = parts_per_order.entry(d.key.clone()).or_default();
                assert!(seen.insert(r.topic), "{} sent twice for {}", r.topic, d.key);
            }
        }
        let complete = parts_per_order.values().filter(|p| p.len() == 3).count();
        assert!(
            complete as f64 > 0.6 * orders.len() as f64,
            "{complete} of {}",
            orders.len()
        );
    }

    #[test]
    fn same_seed_same_bytes_other_seed_other_bytes() {
        let config = GenConfig {
            customers: 500,
            events: 20_000,
            ..sample_config()
        };
        let (a, summary_a) = run(config.clone());
        let (b, summary_b) = run(config.clone());
        assert_eq!(a, b);
        assert_eq!(summary_a, summary_b);
        let (c, _) = run(GenConfig { seed: 12, ..config });
        assert_ne!(a, c);
        assert!(a.len() > 20_000, "{} records", a.len());
    }

    #[test]
    fn summary_counts_what_was_iterated_so_far() {
        let mut generator = GenConfig {
            customers: 300,
            events: 5_000,
            ..sample_config()
        }
        .build()
        .expect("valid");
        let head: Vec<GenRecord> = generator.by_ref().take(1_234).collect();
        let partial = generator.summary();
        assert_eq!(partial.records, 1_234);
        let recounted = recount(&head, true);
        assert_eq!(partial.classes, recounted.classes);
        assert_eq!(partial.topics, recounted.topics);
        assert_eq!(partial.poison, recounted.poison);
        assert_eq!(partial.journey_events, recounted.journey_events);
    }

    #[test]
    fn first_event_is_at_start() {
        let config = GenConfig {
            customers: 50,
            events: 500,
            late_fraction: 0.0,
            ..sample_config()
        };
        let (_, summary) = run(config.clone());
        assert_eq!(summary.first_event_ms, Some(config.start));
    }

    #[test]
    fn without_fulfilment_only_journey_topics() {
        let config = GenConfig {
            fulfilment: false,
            customers: 200,
            events: 10_000,
            ..sample_config()
        };
        let (records, summary) = run(config.clone());
        assert!(records.iter().all(|r| JOURNEY_TOPICS.contains(&r.topic)));
        assert!(summary.orders > 0);
        assert_eq!((summary.fulfilment_parts, summary.missing_parts), (0, 0));
        check_stream(&config, &records, &summary);
    }

    #[test]
    fn zero_events_is_an_empty_stream() {
        let (records, summary) = run(GenConfig {
            events: 0,
            customers: 10,
            ..GenConfig::default()
        });
        assert!(records.is_empty());
        assert_eq!(summary, GenSummary::default());
    }

    #[test]
    fn memory_does_not_grow_with_the_event_count() {
        let peak = |events| {
            let config = GenConfig {
                customers: 1_000,
                events,
                ..GenConfig::default()
            };
            let mut generator = config.build().expect("valid");
            let mut peak = 0;
            while generator.next().is_some() {
                peak = peak.max(generator.in_flight());
            }
            peak
        };
        let (short, long) = (peak(20_000), peak(100_000));
        assert!(
            long < 2 * short,
            "peak in flight: {short} for 20K events, {long} for 100K"
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        #[test]
        fn any_small_config_yields_a_valid_stream(
            seed in any::<u64>(),
            customers in 1u64..40,
            events in 0u64..1_500,
            disorder_ms in prop_oneof![Just(0u64), 1u64..20_000],
            late in 0.0..0.3f64,
            duplicate in 0.0..0.3f64,
            poison in 0.0..0.3f64,
            fulfilment in any::<bool>(),
            missing in 0.0..=1.0f64,
            delayed in 0.0..0.5f64,
        ) {
            let config = GenConfig {
                seed,
                customers,
                events,
                disorder_ms,
                late_fraction: late,
                duplicate_fraction: duplicate,
                poison_fraction: poison,
                fulfilment,
                missing_part_fraction: missing,
                delayed_part_fraction: delayed,
                ..GenConfig::default()
            };
            let (records, summary) = run(config.clone());
            check_stream(&config, &records, &summary);
        }
    }
}
