//! [`GenSummary`]: what the generator has emitted so far, by topic, class and poison
//! kind, plus the derived counts (journey events, orders, parts, missing and delayed
//! parts). It is updated when a record leaves the generator, never when it is
//! scheduled, so it always describes exactly the records iterated.

use serde::Serialize;

use super::{
    CART_UPDATED, INVENTORY_RESERVED, InFlight, ORDER_PLACED, PAGE_VIEWED, PAYMENT_PROCESSED,
    PoisonKind, RecordClass, SHIPMENT_CREATED, Topic,
};

/// Counts of records by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ClassCounts {
    pub normal: u64,
    pub late: u64,
    pub duplicate: u64,
    pub poison: u64,
}

impl ClassCounts {
    pub fn total(&self) -> u64 {
        self.normal + self.late + self.duplicate + self.poison
    }

    fn add(&mut self, class: RecordClass) {
        match class {
            RecordClass::Normal => self.normal += 1,
            RecordClass::Late => self.late += 1,
            RecordClass::Duplicate => self.duplicate += 1,
            RecordClass::Poison(_) => self.poison += 1,
        }
    }
}

/// Counts of poison records by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PoisonCounts {
    pub not_json: u64,
    pub truncated: u64,
    pub missing_key: u64,
    pub missing_time: u64,
    pub bad_time: u64,
    pub wrong_key_type: u64,
}

/// Counts of records per topic, by class.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TopicCounts {
    #[serde(rename = "page.viewed")]
    pub page_viewed: ClassCounts,
    #[serde(rename = "cart.updated")]
    pub cart_updated: ClassCounts,
    #[serde(rename = "order.placed")]
    pub order_placed: ClassCounts,
    #[serde(rename = "payment.processed")]
    pub payment_processed: ClassCounts,
    #[serde(rename = "inventory.reserved")]
    pub inventory_reserved: ClassCounts,
    #[serde(rename = "shipment.created")]
    pub shipment_created: ClassCounts,
}

/// What the generator has emitted so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct GenSummary {
    /// All records emitted.
    pub records: u64,
    /// Well-formed journey events (`Normal` + `Late` on the journey topics).
    pub journey_events: u64,
    /// Well-formed `order.placed` events.
    pub orders: u64,
    /// Well-formed fulfilment parts (`Normal` + `Late` on the fulfilment topics).
    pub fulfilment_parts: u64,
    /// Parts of the emitted orders that will never be sent.
    pub missing_parts: u64,
    /// Emitted parts that happened 9 to 48 hours after their order.
    pub delayed_parts: u64,
    /// Smallest and largest event time of the well-formed records emitted.
    pub first_event_ms: Option<i64>,
    pub last_event_ms: Option<i64>,
    pub classes: ClassCounts,
    pub poison: PoisonCounts,
    pub topics: TopicCounts,
}

impl GenSummary {
    /// The counts of one topic, by name.
    pub fn topic(&self, name: &str) -> Option<&ClassCounts> {
        let t = &self.topics;
        match name {
            PAGE_VIEWED => Some(&t.page_viewed),
            CART_UPDATED => Some(&t.cart_updated),
            ORDER_PLACED => Some(&t.order_placed),
            PAYMENT_PROCESSED => Some(&t.payment_processed),
            INVENTORY_RESERVED => Some(&t.inventory_reserved),
            SHIPMENT_CREATED => Some(&t.shipment_created),
            _ => None,
        }
    }

    pub(super) fn count(&mut self, flight: &InFlight) {
        let record = &flight.record;
        self.records += 1;
        self.classes.add(record.class);
        let t = &mut self.topics;
        match flight.topic {
            Topic::PageViewed => t.page_viewed.add(record.class),
            Topic::CartUpdated => t.cart_updated.add(record.class),
            Topic::OrderPlaced => t.order_placed.add(record.class),
            Topic::PaymentProcessed => t.payment_processed.add(record.class),
            Topic::InventoryReserved => t.inventory_reserved.add(record.class),
            Topic::ShipmentCreated => t.shipment_created.add(record.class),
        }
        match record.class {
            RecordClass::Poison(kind) => {
                let p = &mut self.poison;
                *match kind {
                    PoisonKind::NotJson => &mut p.not_json,
                    PoisonKind::Truncated => &mut p.truncated,
                    PoisonKind::MissingKey => &mut p.missing_key,
                    PoisonKind::MissingTime => &mut p.missing_time,
                    PoisonKind::BadTime => &mut p.bad_time,
                    PoisonKind::WrongKeyType => &mut p.wrong_key_type,
                } += 1;
            }
            RecordClass::Duplicate => {}
            RecordClass::Normal | RecordClass::Late => {
                if flight.topic.is_journey() {
                    self.journey_events += 1;
                } else {
                    self.fulfilment_parts += 1;
                }
                if flight.topic == Topic::OrderPlaced {
                    self.orders += 1;
                    self.missing_parts += u64::from(flight.missing_parts);
                }
                self.delayed_parts += u64::from(flight.delayed);
                let ts = record.event_ms;
                self.first_event_ms = Some(self.first_event_ms.map_or(ts, |f| f.min(ts)));
                self.last_event_ms = Some(self.last_event_ms.map_or(ts, |l| l.max(ts)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_looked_up_and_serialized_by_name() {
        let mut summary = GenSummary::default();
        summary.topics.cart_updated.late = 3;
        summary.topics.shipment_created.poison = 2;
        assert_eq!(summary.topic(CART_UPDATED).map(|c| c.late), Some(3));
        assert_eq!(
            summary.topic(SHIPMENT_CREATED).map(ClassCounts::total),
            Some(2)
        );
        assert_eq!(summary.topic("page.viewd"), None);
        let json = serde_json::to_value(&summary).expect("serializable");
        assert_eq!(json["topics"]["cart.updated"]["late"], 3);
        assert_eq!(json["topics"]["shipment.created"]["poison"], 2);
        assert_eq!(json["first_event_ms"], serde_json::Value::Null);
    }
}
