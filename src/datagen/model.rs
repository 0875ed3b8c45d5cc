//! The simulated world behind the generator: customers, their sessions, the shop's
//! catalogue, orders and the fulfilment parts an order causes.
//!
//! Everything here is a pure function of the random stream it is handed, so the
//! generator stays deterministic for a seed. Integer-only sampling (bucketed uniform
//! mixtures, no `exp`/`ln`) keeps the output identical across platforms.
//!
//! Invariants the stream-level tests rely on:
//! - a gap inside a session is at most [`MAX_INSIDE_GAP_MS`] (25 min);
//! - a gap between two sessions of a customer is at least [`MIN_BETWEEN_GAP_MS`] (35 min),
//!   so a 30-minute session gap ([`SESSION_GAP_MS`]) separates sessions exactly as
//!   simulated;
//! - the end of the current session is known from its first event on
//!   ([`Customer::session_end`]): the gaps inside a session come from a small
//!   per-customer stream that is previewed when the session is planned;
//! - an order carries 1 to [`MAX_LINES`] lines, each with quantity ≥ 1, and ends its
//!   session;
//! - non-delayed parts happen at most [`MAX_PART_DELAY_MS`] (4 h) after their order,
//!   delayed ones at least [`MIN_DELAYED_PART_MS`] (9 h) after it, so a `complete`
//!   timeout in [4 h, [`MAX_COMPLETE_TIMEOUT_MS`]) separates them.

use rand::{Rng, RngCore};

/// Longest pause between two events of one session.
pub const MAX_INSIDE_GAP_MS: i64 = 25 * MINUTE;
/// The session gap the dataset is designed for: between the two bounds around it.
pub const SESSION_GAP_MS: i64 = 30 * MINUTE;
/// Shortest pause between two sessions of one customer.
pub const MIN_BETWEEN_GAP_MS: i64 = 35 * MINUTE;
/// Longest normal delay between an order and one of its fulfilment parts.
pub const MAX_PART_DELAY_MS: i64 = 4 * HOUR;
/// Longest `complete` timeout the fulfilment data is designed for (exclusive).
pub const MAX_COMPLETE_TIMEOUT_MS: i64 = 5 * HOUR;
/// Shortest delay of a "much delayed" fulfilment part after its order: beyond the
/// last normal part plus the longest timeout, so it never completes its order.
pub const MIN_DELAYED_PART_MS: i64 = MAX_PART_DELAY_MS + MAX_COMPLETE_TIMEOUT_MS;
/// Longest delay of a "much delayed" fulfilment part after its order.
pub const MAX_DELAYED_PART_MS: i64 = 48 * HOUR;
/// First sessions start spread over this window so the event rate is steady from the
/// beginning instead of every customer arriving at `start`.
pub const FIRST_SESSION_SPREAD_MS: i64 = 6 * HOUR;
/// A cart, and therefore an order, holds at most this many distinct products.
pub const MAX_LINES: usize = 3;
/// Number of products in the catalogue (`sku-00000` … `sku-19999`).
pub const SKUS: u32 = 20_000;

const SECOND: i64 = 1_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

/// A market: where a customer shops from. The offset is January's (the default start).
pub struct Market {
    pub locale: &'static str,
    pub country: &'static str,
    pub currency: &'static str,
    pub offset_minutes: i32,
}

pub const MARKETS: [Market; 9] = [
    market("de-DE", "DE", "EUR", 60),
    market("fr-FR", "FR", "EUR", 60),
    market("fi-FI", "FI", "EUR", 120),
    market("en-GB", "GB", "GBP", 0),
    market("en-US", "US", "USD", -300),
    market("en-US", "US", "USD", -480),
    market("pt-BR", "BR", "BRL", -180),
    market("en-IN", "IN", "INR", 330),
    market("en-AU", "AU", "AUD", 660),
];

const fn market(
    locale: &'static str,
    country: &'static str,
    currency: &'static str,
    offset_minutes: i32,
) -> Market {
    Market {
        locale,
        country,
        currency,
        offset_minutes,
    }
}

/// Devices; the two apps send epoch milliseconds, browsers send RFC 3339.
pub const DEVICES: [&str; 5] = ["mobile", "desktop", "tablet", "ios-app", "android-app"];
const DEVICE_WEIGHTS: [u32; 5] = [40, 35, 10, 8, 7];
const FIRST_APP_DEVICE: u8 = 3;

pub const CATEGORIES: [&str; 10] = [
    "shoes", "shirts", "jackets", "bags", "watches", "books", "toys", "kitchen", "garden", "audio",
];
pub const SEARCH_TERMS: [&str; 10] = [
    "running+shoes",
    "linen+shirt",
    "rain+jacket",
    "laptop+backpack",
    "diving+watch",
    "crime+novel",
    "wooden+train",
    "chef+knife",
    "hose+reel",
    "wireless+earbuds",
];
pub const EXTERNAL_REFERRERS: [&str; 4] = [
    "https://www.google.com/",
    "https://www.instagram.com/",
    "https://www.bing.com/",
    "https://newsletter.example.com/weekly-deals",
];
pub const PAYMENT_METHODS: [&str; 4] = ["card", "paypal", "klarna", "apple_pay"];
pub const SHIPPING_METHODS: [&str; 3] = ["standard", "express", "pickup"];
pub const CARRIERS: [&str; 5] = ["DHL", "UPS", "DPD", "GLS", "PostNL"];
pub const WAREHOUSES: [&str; 4] = ["FRA-1", "AMS-2", "LEJ-1", "MAD-1"];
pub const CART_ACTIONS: [&str; 3] = ["add", "set_qty", "remove"];

/// How an event writes its `ts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TsFormat {
    /// Integer epoch milliseconds.
    EpochMillis,
    /// RFC 3339 in UTC with the `Z` designator.
    Utc,
    /// RFC 3339 with this numeric offset in minutes (`+00:00` for 0).
    Offset(i32),
}

/// A page of the shop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    Home,
    Category(u8),
    Product(u32),
    Search(u8),
    Cart,
}

/// Where a page view came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Referrer {
    /// Typed URL or bookmark: `"referrer": null`.
    Direct,
    /// An index into [`EXTERNAL_REFERRERS`].
    External(u8),
    /// The previous page of the same session.
    Internal(Page),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Line {
    pub sku: u32,
    pub qty: u8,
}

/// A cart or an order's lines: fixed capacity so a customer's state never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Lines {
    items: [Line; MAX_LINES],
    len: u8,
}

impl Lines {
    pub fn as_slice(&self) -> &[Line] {
        &self.items[..usize::from(self.len)]
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn item_count(&self) -> u64 {
        self.as_slice().iter().map(|l| u64::from(l.qty)).sum()
    }

    pub fn total_cents(&self) -> u64 {
        self.as_slice()
            .iter()
            .map(|l| u64::from(l.qty) * price_cents(l.sku))
            .sum()
    }

    /// Adds `qty` of `sku`; returns the line's new quantity, or `None` when full.
    fn add(&mut self, sku: u32, qty: u8) -> Option<u8> {
        let len = usize::from(self.len);
        if let Some(line) = self.items[..len].iter_mut().find(|l| l.sku == sku) {
            line.qty = line.qty.saturating_add(qty);
            return Some(line.qty);
        }
        let slot = self.items.get_mut(len)?;
        *slot = Line { sku, qty };
        self.len += 1;
        Some(qty)
    }

    fn remove(&mut self, index: usize) -> Option<Line> {
        let len = usize::from(self.len);
        if index >= len {
            return None;
        }
        let line = self.items[index];
        self.items.copy_within(index + 1..len, index);
        self.len -= 1;
        Some(line)
    }
}

/// Price of a product, fixed by its SKU so the same product always costs the same.
pub fn price_cents(sku: u32) -> u64 {
    let h = mix(sku);
    let euros = 5 + h % 245;
    let ending = [1, 10, 51][(h >> 20) as usize % 3];
    euros * 100 - ending
}

/// Shipping weight of a product in grams.
pub fn weight_grams(sku: u32) -> u64 {
    150 + (mix(sku) >> 8) % 2_500
}

/// Cheap integer hash so product attributes look random but stay fixed per SKU.
fn mix(sku: u32) -> u64 {
    finalize(u64::from(sku).wrapping_add(GOLDEN_GAMMA))
}

const GOLDEN_GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// The SplitMix64 output function: a bijective bit mixer.
fn finalize(x: u64) -> u64 {
    let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// A customer's private random stream for the gaps inside one session (SplitMix64,
/// 8 bytes). A copy is run ahead when the session is planned, so the session's end
/// is known before its first event is emitted.
#[derive(Debug, Clone)]
struct GapRng(u64);

impl RngCore for GapRng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN_GAMMA);
        finalize(self.0)
    }

    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn fill_bytes(&mut self, dst: &mut [u8]) {
        for chunk in dst.chunks_mut(8) {
            let bytes = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

/// One simulated event, before it is rendered to JSON.
#[derive(Debug, Clone)]
pub struct Event {
    /// Global sequence number; becomes the event id (`pv-<seq>`, `pay-<seq>` …).
    pub seq: u64,
    /// Event time, epoch milliseconds.
    pub ts: i64,
    pub format: TsFormat,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub enum Body {
    PageView {
        customer: u32,
        market: u8,
        device: u8,
        page: Page,
        referrer: Referrer,
        dwell_ms: u32,
    },
    CartUpdate {
        customer: u32,
        market: u8,
        device: u8,
        action: u8,
        sku: u32,
        /// The line's quantity after the update (0 after a removal).
        qty: u8,
        cart: Lines,
    },
    OrderPlaced(Order),
    Payment {
        order: Order,
        psp_reference: u64,
        attempt: u8,
    },
    Inventory {
        order: Order,
        warehouse: u8,
        reservation: u32,
    },
    Shipment {
        order: Order,
        carrier: u8,
        tracking: u64,
    },
}

/// What an order and its fulfilment parts share.
#[derive(Debug, Clone, Copy)]
pub struct Order {
    /// Order number; the id is `o-<number, 7 digits>`.
    pub number: u64,
    pub customer: u32,
    pub market: u8,
    pub lines: Lines,
    pub payment: u8,
    pub shipping: u8,
}

/// A customer's state between two of its events: O(1) bytes, no heap allocation.
#[derive(Debug, Clone)]
pub struct Customer {
    market: u8,
    device: u8,
    /// Events left in the current session, including the next one.
    left: u16,
    /// Whether the current session ends with an order.
    ordering: bool,
    /// The next event opens a session.
    fresh: bool,
    page: Page,
    /// The cart survives sessions, like a real shop's.
    cart: Lines,
    /// Draws the gaps of the current session.
    gaps: GapRng,
    /// Sum of the gaps still to come in the current session.
    rest_of_session_ms: i64,
}

impl Customer {
    pub fn new(rng: &mut impl Rng) -> Customer {
        let market = rng.random_range(0..MARKETS.len() as u32) as u8;
        let device = weighted(rng, &DEVICE_WEIGHTS) as u8;
        let mut customer = Customer {
            market,
            device,
            left: 0,
            ordering: false,
            fresh: true,
            page: Page::Home,
            cart: Lines::default(),
            gaps: GapRng(0),
            rest_of_session_ms: 0,
        };
        customer.plan_session(rng);
        customer
    }

    /// Plans the next session: its length (1 to 60 events, mean ≈ 10), whether it
    /// ends with an order, and the gaps between its events (previewed to know when it
    /// ends).
    fn plan_session(&mut self, rng: &mut impl Rng) {
        let len = bucketed(rng, &[(25, 1, 3), (45, 4, 10), (25, 11, 25), (5, 26, 60)]);
        self.left = len as u16;
        self.ordering = len >= 3 && rng.random_range(0..100u32) < 30;
        self.fresh = true;
        self.gaps = GapRng(rng.random());
        let mut preview = self.gaps.clone();
        self.rest_of_session_ms = (1..len).map(|_| inside_gap(&mut preview)).sum();
    }

    /// Event time of the last event of the current session, given the event time of
    /// the event just produced (call between `next_body` and `advance`).
    pub fn session_end(&self, ts: i64) -> i64 {
        ts + self.rest_of_session_ms
    }

    /// The timestamp format of this customer's next event: apps send epoch millis,
    /// browsers RFC 3339 in local time, and the shop's backend relays some in UTC.
    pub fn ts_format(&self, rng: &mut impl Rng) -> TsFormat {
        let roll = rng.random_range(0..100u32);
        if self.device >= FIRST_APP_DEVICE {
            if roll < 90 {
                TsFormat::EpochMillis
            } else {
                TsFormat::Utc
            }
        } else if roll < 75 {
            TsFormat::Offset(MARKETS[usize::from(self.market)].offset_minutes)
        } else {
            TsFormat::Utc
        }
    }

    /// Produces this customer's next journey event. `number` is the customer's
    /// 1-based number (`c-000001`); `next_order` hands out order numbers.
    pub fn next_body(&mut self, number: u32, rng: &mut impl Rng, next_order: &mut u64) -> Body {
        if self.ordering && self.left == 2 {
            // Before checking out: fill an empty cart, or look at the cart. Either
            // way the cart is not empty for the order that follows.
            return if self.cart.is_empty() {
                self.cart_update(number, rng, true)
            } else {
                self.page_view(number, rng, Some(Page::Cart))
            };
        }
        if self.ordering && self.left == 1 && !self.cart.is_empty() {
            *next_order += 1;
            let order = Order {
                number: *next_order,
                customer: number,
                market: self.market,
                lines: std::mem::take(&mut self.cart),
                payment: rng.random_range(0..PAYMENT_METHODS.len() as u32) as u8,
                shipping: weighted(rng, &[70, 20, 10]) as u8,
            };
            return Body::OrderPlaced(order);
        }
        if !self.fresh && rng.random_range(0..100u32) < 22 {
            self.cart_update(number, rng, false)
        } else {
            self.page_view(number, rng, None)
        }
    }

    /// Moves past the event just produced and returns the pause before the next one.
    pub fn advance(&mut self, rng: &mut impl Rng) -> i64 {
        self.fresh = false;
        if self.left > 1 {
            self.left -= 1;
            let gap = inside_gap(&mut self.gaps);
            self.rest_of_session_ms -= gap;
            return gap;
        }
        self.plan_session(rng);
        between_gap(rng)
    }

    fn page_view(&mut self, number: u32, rng: &mut impl Rng, forced: Option<Page>) -> Body {
        let (page, referrer) = if let Some(page) = forced {
            (page, Referrer::Internal(self.page))
        } else if self.fresh {
            let page = match weighted(rng, &[30, 25, 35, 10]) {
                0 => Page::Home,
                1 => Page::Category(random_category(rng)),
                2 => Page::Product(popular_sku(rng)),
                _ => Page::Search(random_category(rng)),
            };
            let referrer = match weighted(rng, &[25, 35, 15, 10, 15]) {
                0 => Referrer::Direct,
                i => Referrer::External((i - 1) as u8),
            };
            (page, referrer)
        } else {
            let page = match weighted(rng, &[50, 20, 10, 5, 15]) {
                0 => Page::Product(self.browse_product(rng)),
                1 => Page::Category(random_category(rng)),
                2 => Page::Search(random_category(rng)),
                4 if !self.cart.is_empty() => Page::Cart,
                _ => Page::Home,
            };
            (page, Referrer::Internal(self.page))
        };
        self.page = page;
        Body::PageView {
            customer: number,
            market: self.market,
            device: self.device,
            page,
            referrer,
            dwell_ms: rng.random_range(800..90_000),
        }
    }

    /// A product to look at next: often one from the category being browsed.
    fn browse_product(&self, rng: &mut impl Rng) -> u32 {
        let sku = popular_sku(rng);
        match self.page {
            Page::Category(c) | Page::Search(c) if rng.random_range(0..100u32) < 60 => {
                let c = u32::from(c);
                let aligned = sku - sku % 10 + c;
                if aligned < SKUS { aligned } else { sku }
            }
            _ => sku,
        }
    }

    fn cart_update(&mut self, number: u32, rng: &mut impl Rng, force_add: bool) -> Body {
        let len = self.cart.as_slice().len();
        let roll = rng.random_range(0..100u32);
        let (action, sku, qty) = if force_add || len == 0 || (len < MAX_LINES && roll < 50) {
            // Most additions are the product on screen.
            let sku = match self.page {
                Page::Product(sku) if roll % 5 != 0 => sku,
                _ => popular_sku(rng),
            };
            let add = if rng.random_range(0..100u32) < 85 {
                1
            } else {
                2
            };
            let qty = self.cart.add(sku, add).unwrap_or(add);
            (0, sku, qty)
        } else if roll < 80 {
            let index = rng.random_range(0..len as u32) as usize;
            let qty = rng.random_range(1..=4u8);
            let line = &mut self.cart.items[index];
            line.qty = qty;
            (1, line.sku, qty)
        } else {
            let index = rng.random_range(0..len as u32) as usize;
            let sku = self.cart.remove(index).map_or(0, |l| l.sku);
            (2, sku, 0)
        };
        Body::CartUpdate {
            customer: number,
            market: self.market,
            device: self.device,
            action,
            sku,
            qty,
            cart: self.cart,
        }
    }
}

/// Delay between an order and its fulfilment part `part` (0 payment, 1 inventory,
/// 2 shipment); a `delayed` part comes much later than any normal one.
pub fn part_delay(rng: &mut impl Rng, part: usize, delayed: bool) -> i64 {
    if delayed {
        return rng.random_range(MIN_DELAYED_PART_MS..=MAX_DELAYED_PART_MS);
    }
    match part {
        // Payment is captured within minutes.
        0 => rng.random_range(2 * SECOND..=5 * MINUTE),
        // The warehouse reserves stock within half an hour.
        1 => rng.random_range(30 * SECOND..=30 * MINUTE),
        // A parcel is labelled within hours.
        _ => rng.random_range(30 * MINUTE..=MAX_PART_DELAY_MS),
    }
}

/// The body of fulfilment part `part` (0 payment, 1 inventory, 2 shipment).
pub fn part_body(order: Order, part: usize, rng: &mut impl Rng) -> Body {
    match part {
        0 => Body::Payment {
            order,
            psp_reference: rng.random::<u64>() >> 16,
            attempt: if rng.random_range(0..100u32) < 92 {
                1
            } else {
                2
            },
        },
        1 => Body::Inventory {
            order,
            warehouse: rng.random_range(0..WAREHOUSES.len() as u32) as u8,
            reservation: rng.random_range(10_000_000..100_000_000),
        },
        _ => Body::Shipment {
            order,
            carrier: rng.random_range(0..CARRIERS.len() as u32) as u8,
            tracking: rng.random_range(0..1_000_000_000_000_000),
        },
    }
}

/// Timestamp formats of backend systems (fulfilment parts): mostly UTC.
pub fn backend_ts_format(rng: &mut impl Rng) -> TsFormat {
    match weighted(rng, &[60, 25, 15]) {
        0 => TsFormat::Utc,
        1 => TsFormat::Offset(60),
        _ => TsFormat::EpochMillis,
    }
}

/// Delay of a customer's first session after `start`.
pub fn first_session_offset(rng: &mut impl Rng) -> i64 {
    rng.random_range(0..FIRST_SESSION_SPREAD_MS)
}

/// Seconds to a few minutes, occasionally a long read; never above 25 minutes.
fn inside_gap(rng: &mut impl Rng) -> i64 {
    bucketed(
        rng,
        &[
            (60, 2 * SECOND, MINUTE),
            (28, MINUTE, 5 * MINUTE),
            (10, 5 * MINUTE, 12 * MINUTE),
            (2, 12 * MINUTE, MAX_INSIDE_GAP_MS),
        ],
    )
}

/// 35 minutes to two days; mean ≈ 6.3 hours.
fn between_gap(rng: &mut impl Rng) -> i64 {
    bucketed(
        rng,
        &[
            (30, MIN_BETWEEN_GAP_MS, 2 * HOUR),
            (40, 2 * HOUR, 6 * HOUR),
            (25, 6 * HOUR, 16 * HOUR),
            (5, 16 * HOUR, 48 * HOUR),
        ],
    )
}

fn random_category(rng: &mut impl Rng) -> u8 {
    rng.random_range(0..CATEGORIES.len() as u32) as u8
}

/// Low SKUs are popular: the minimum of two uniform draws has a linear skew.
fn popular_sku(rng: &mut impl Rng) -> u32 {
    rng.random_range(0..SKUS).min(rng.random_range(0..SKUS))
}

/// Index drawn with the given percentage weights (they sum to 100).
fn weighted(rng: &mut impl Rng, weights: &[u32]) -> usize {
    let mut roll = rng.random_range(0..weights.iter().sum::<u32>());
    for (i, &w) in weights.iter().enumerate() {
        if roll < w {
            return i;
        }
        roll -= w;
    }
    weights.len() - 1
}

/// A uniform draw from one of several `(weight, lo, hi)` buckets, bounds inclusive.
fn bucketed(rng: &mut impl Rng, buckets: &[(u32, i64, i64)]) -> i64 {
    let mut roll = rng.random_range(0..buckets.iter().map(|b| b.0).sum::<u32>());
    let mut chosen = buckets[buckets.len() - 1];
    for &bucket in buckets {
        if roll < bucket.0 {
            chosen = bucket;
            break;
        }
        roll -= bucket.0;
    }
    rng.random_range(chosen.1..=chosen.2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn gaps_respect_the_session_bounds() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50_000 {
            let inside = inside_gap(&mut rng);
            assert!(
                (2 * SECOND..=MAX_INSIDE_GAP_MS).contains(&inside),
                "{inside}"
            );
            let between = between_gap(&mut rng);
            assert!(
                (MIN_BETWEEN_GAP_MS..=48 * HOUR).contains(&between),
                "{between}"
            );
        }
    }

    #[test]
    fn lines_add_merge_and_remove() {
        let mut lines = Lines::default();
        assert_eq!(lines.add(5, 1), Some(1));
        assert_eq!(lines.add(7, 2), Some(2));
        assert_eq!(lines.add(5, 2), Some(3));
        assert_eq!(lines.add(9, 1), Some(1));
        assert_eq!(lines.add(11, 1), None, "a fourth product does not fit");
        assert_eq!(lines.remove(0), Some(Line { sku: 5, qty: 3 }));
        assert_eq!(
            lines.as_slice(),
            &[Line { sku: 7, qty: 2 }, Line { sku: 9, qty: 1 }]
        );
        assert_eq!(lines.remove(2), None);
        assert_eq!(lines.item_count(), 3);
        assert_eq!(lines.total_cents(), 2 * price_cents(7) + price_cents(9));
    }

    #[test]
    fn prices_look_like_shop_prices() {
        for sku in 0..SKUS {
            let p = price_cents(sku);
            assert!((449..=24_999).contains(&p), "sku {sku}: {p}");
            assert!(matches!(p % 100, 99 | 90 | 49), "sku {sku}: {p}");
        }
    }

    #[test]
    fn sessions_end_where_predicted_and_orders_end_sessions() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut customer = Customer::new(&mut rng);
        let (mut next_order, mut orders, mut sessions) = (0, 0, 0);
        let mut ts = 0;
        let mut predicted = Vec::new();
        for _ in 0..20_000 {
            let body = customer.next_body(1, &mut rng, &mut next_order);
            predicted.push(customer.session_end(ts));
            if let Body::OrderPlaced(order) = &body {
                orders += 1;
                assert!(!order.lines.is_empty());
                assert!(order.lines.as_slice().iter().all(|l| l.qty >= 1));
            }
            let gap = customer.advance(&mut rng);
            if matches!(body, Body::OrderPlaced(_)) {
                assert!(gap >= MIN_BETWEEN_GAP_MS, "an order ends its session");
            }
            if gap > MAX_INSIDE_GAP_MS {
                sessions += 1;
                assert!(
                    predicted.iter().all(|&end| end == ts),
                    "{predicted:?} vs {ts}"
                );
                predicted.clear();
            }
            ts += gap;
        }
        assert_eq!(orders, next_order);
        assert!(orders > 300, "{orders} orders in 20000 events");
        assert!(sessions > 1_500, "{sessions} sessions in 20000 events");
    }
}
