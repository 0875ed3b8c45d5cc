//! Rendering of simulated events to JSON bytes, well-formed or deliberately broken.
//!
//! The writer appends straight into the record's buffer with hand-rolled integer and
//! timestamp formatting (no `format!`, no serde per record): this is the generator's
//! hot path. Every string it writes comes from the generator's own tables or is an
//! ASCII id, so nothing needs JSON escaping; that invariant is what makes the writer
//! this small.
//!
//! Timestamps are rendered losslessly: the millisecond fraction is written whenever
//! it is not zero, so a decoder recovers exactly the simulated event time.

use rand::Rng;

use super::PoisonKind;
use super::model::{
    Body, CARRIERS, CART_ACTIONS, CATEGORIES, DEVICES, EXTERNAL_REFERRERS, Event, Lines, MARKETS,
    Order, PAYMENT_METHODS, Page, Referrer, SEARCH_TERMS, SHIPPING_METHODS, TsFormat, WAREHOUSES,
    price_cents, weight_grams,
};

/// Initial capacity of a record's buffer: above the typical record (≈ 230 bytes, at
/// most ≈ 400), so each record costs one allocation.
pub const VALUE_CAPACITY: usize = 384;

const SHOP: &str = "https://shop.example.com";
const MS_PER_DAY: i64 = 86_400_000;

/// How the key and time fields of a JSON record are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Valid,
    NoKey,
    KeyObject,
    NoTime,
    /// A `ts` string in a format that is not RFC 3339; the variant picks which.
    BadTime(u8),
}

/// Renders a well-formed event.
pub fn render(event: &Event, out: &mut Vec<u8>) {
    render_shaped(event, Shape::Valid, out);
}

/// Renders `event` as a poison record of the given kind.
pub fn render_poison(event: &Event, kind: PoisonKind, rng: &mut impl Rng, out: &mut Vec<u8>) {
    match kind {
        PoisonKind::NotJson => not_json(event, rng.random_range(0..4u8), rng, out),
        PoisonKind::Truncated => {
            render_shaped(event, Shape::Valid, out);
            // A strict prefix of a JSON object lacks its closing brace: never valid.
            let keep = rng.random_range(out.len() / 4..out.len());
            out.truncate(keep);
        }
        PoisonKind::MissingKey => render_shaped(event, Shape::NoKey, out),
        PoisonKind::MissingTime => render_shaped(event, Shape::NoTime, out),
        PoisonKind::BadTime => render_shaped(event, Shape::BadTime(rng.random_range(0..4u8)), out),
        PoisonKind::WrongKeyType => render_shaped(event, Shape::KeyObject, out),
    }
}

/// The record key: the customer id for journey events, the order id for parts.
pub fn key(body: &Body) -> String {
    let (prefix, number, width) = match body {
        Body::PageView { customer, .. } | Body::CartUpdate { customer, .. } => {
            ("c-", u64::from(*customer), 6)
        }
        Body::OrderPlaced(order) => ("c-", u64::from(order.customer), 6),
        Body::Payment { order, .. }
        | Body::Inventory { order, .. }
        | Body::Shipment { order, .. } => ("o-", order.number, 7),
    };
    let (buf, start) = digits(number);
    let mut key = String::with_capacity(prefix.len() + width.max(buf.len() - start));
    key.push_str(prefix);
    key.extend(std::iter::repeat_n(
        '0',
        width.saturating_sub(buf.len() - start),
    ));
    key.extend(buf[start..].iter().map(|&b| char::from(b)));
    key
}

fn customer_id(out: &mut Vec<u8>, number: u32) {
    out.extend_from_slice(b"c-");
    push_padded(out, u64::from(number), 6);
}

fn order_id(out: &mut Vec<u8>, number: u64) {
    out.extend_from_slice(b"o-");
    push_padded(out, number, 7);
}

fn render_shaped(event: &Event, shape: Shape, out: &mut Vec<u8>) {
    let mut j = Json::object(out);
    match &event.body {
        Body::PageView {
            customer,
            market,
            device,
            page,
            referrer,
            dwell_ms,
        } => {
            j.id("event_id", "pv-", event.seq, 0);
            key_field(&mut j, shape, "customer_id", |o| customer_id(o, *customer));
            time_field(&mut j, shape, event);
            j.name("page");
            j.raw(b"\"");
            page_url(j.out, *page);
            j.raw(b"\"");
            j.name("referrer");
            match referrer {
                Referrer::Direct => j.raw(b"null"),
                Referrer::External(i) => j.quoted(EXTERNAL_REFERRERS[usize::from(*i)]),
                Referrer::Internal(page) => {
                    j.raw(b"\"");
                    page_url(j.out, *page);
                    j.raw(b"\"");
                }
            }
            j.str("device", DEVICES[usize::from(*device)]);
            j.str("locale", MARKETS[usize::from(*market)].locale);
            j.uint("dwell_ms", u64::from(*dwell_ms));
        }
        Body::CartUpdate {
            customer,
            market,
            device,
            action,
            sku,
            qty,
            cart,
        } => {
            j.id("event_id", "cu-", event.seq, 0);
            key_field(&mut j, shape, "customer_id", |o| customer_id(o, *customer));
            time_field(&mut j, shape, event);
            j.str("action", CART_ACTIONS[usize::from(*action)]);
            j.id("sku", "sku-", u64::from(*sku), 5);
            j.str("category", CATEGORIES[*sku as usize % CATEGORIES.len()]);
            j.uint("qty", u64::from(*qty));
            j.money("unit_price", price_cents(*sku));
            j.str("currency", MARKETS[usize::from(*market)].currency);
            j.uint("cart_items", cart.item_count());
            j.money("cart_total", cart.total_cents());
            j.str("device", DEVICES[usize::from(*device)]);
        }
        Body::OrderPlaced(order) => {
            j.id("event_id", "op-", event.seq, 0);
            key_field(&mut j, shape, "customer_id", |o| {
                customer_id(o, order.customer)
            });
            time_field(&mut j, shape, event);
            j.id("order_id", "o-", order.number, 7);
            line_array(&mut j, "items", &order.lines, true);
            j.uint("item_count", order.lines.item_count());
            j.money("total", order.lines.total_cents());
            j.str("currency", MARKETS[usize::from(order.market)].currency);
            j.str(
                "payment_method",
                PAYMENT_METHODS[usize::from(order.payment)],
            );
            j.begin("shipping", b'{');
            j.str("method", SHIPPING_METHODS[usize::from(order.shipping)]);
            j.str("country", MARKETS[usize::from(order.market)].country);
            j.end(b'}');
        }
        Body::Payment {
            order,
            psp_reference,
            attempt,
        } => {
            j.id("event_id", "pay-", event.seq, 0);
            part_header(&mut j, shape, event, order);
            j.name("customer_id");
            j.raw(b"\"");
            customer_id(j.out, order.customer);
            j.raw(b"\"");
            j.money("amount", order.lines.total_cents());
            j.str("currency", MARKETS[usize::from(order.market)].currency);
            j.str("method", PAYMENT_METHODS[usize::from(order.payment)]);
            j.str("status", "captured");
            j.name("psp_reference");
            j.raw(b"\"psp-");
            push_hex(j.out, *psp_reference, 12);
            j.raw(b"\"");
            j.uint("attempt", u64::from(*attempt));
        }
        Body::Inventory {
            order,
            warehouse,
            reservation,
        } => {
            j.id("event_id", "inv-", event.seq, 0);
            part_header(&mut j, shape, event, order);
            j.str("warehouse", WAREHOUSES[usize::from(*warehouse)]);
            j.id("reservation_id", "res-", u64::from(*reservation), 0);
            line_array(&mut j, "lines", &order.lines, false);
            j.str("status", "reserved");
        }
        Body::Shipment {
            order,
            carrier,
            tracking,
        } => {
            j.id("event_id", "shp-", event.seq, 0);
            part_header(&mut j, shape, event, order);
            j.str("carrier", CARRIERS[usize::from(*carrier)]);
            j.str("service", SHIPPING_METHODS[usize::from(order.shipping)]);
            j.id("tracking_number", "JJD", *tracking, 15);
            j.str("country", MARKETS[usize::from(order.market)].country);
            let items = order.lines.item_count();
            j.uint("parcels", 1 + items / 4);
            let grams = order.lines.as_slice().iter();
            j.uint(
                "weight_g",
                grams.map(|l| u64::from(l.qty) * weight_grams(l.sku)).sum(),
            );
        }
    }
    j.end(b'}');
}

fn part_header(j: &mut Json<'_>, shape: Shape, event: &Event, order: &Order) {
    key_field(j, shape, "order_id", |o| order_id(o, order.number));
    time_field(j, shape, event);
}

fn line_array(j: &mut Json<'_>, name: &str, lines: &Lines, priced: bool) {
    j.begin(name, b'[');
    for line in lines.as_slice() {
        j.element(b'{');
        j.id("sku", "sku-", u64::from(line.sku), 5);
        j.uint("qty", u64::from(line.qty));
        if priced {
            j.money("unit_price", price_cents(line.sku));
        }
        j.end(b'}');
    }
    j.end(b']');
}

fn key_field(j: &mut Json<'_>, shape: Shape, name: &str, id: impl FnOnce(&mut Vec<u8>)) {
    match shape {
        Shape::NoKey => {}
        Shape::KeyObject => {
            j.begin(name, b'{');
            j.name("id");
            j.raw(b"\"");
            id(j.out);
            j.raw(b"\"");
            j.end(b'}');
        }
        Shape::Valid | Shape::NoTime | Shape::BadTime(_) => {
            j.name(name);
            j.raw(b"\"");
            id(j.out);
            j.raw(b"\"");
        }
    }
}

fn time_field(j: &mut Json<'_>, shape: Shape, event: &Event) {
    match shape {
        Shape::NoTime => {}
        Shape::BadTime(variant) => {
            j.name("ts");
            j.raw(b"\"");
            bad_time(j.out, event.ts, event.format, variant);
            j.raw(b"\"");
        }
        Shape::Valid | Shape::NoKey | Shape::KeyObject => {
            j.name("ts");
            match event.format {
                TsFormat::EpochMillis => push_i64(j.out, event.ts),
                TsFormat::Utc => {
                    j.raw(b"\"");
                    push_rfc3339(j.out, event.ts, None);
                    j.raw(b"\"");
                }
                TsFormat::Offset(minutes) => {
                    j.raw(b"\"");
                    push_rfc3339(j.out, event.ts, Some(minutes));
                    j.raw(b"\"");
                }
            }
        }
    }
}

fn page_url(out: &mut Vec<u8>, page: Page) {
    out.extend_from_slice(SHOP.as_bytes());
    match page {
        Page::Home => out.push(b'/'),
        Page::Category(c) => {
            out.extend_from_slice(b"/c/");
            out.extend_from_slice(CATEGORIES[usize::from(c)].as_bytes());
        }
        Page::Product(sku) => {
            out.extend_from_slice(b"/p/");
            out.extend_from_slice(CATEGORIES[sku as usize % CATEGORIES.len()].as_bytes());
            out.extend_from_slice(b"/sku-");
            push_padded(out, u64::from(sku), 5);
        }
        Page::Search(c) => {
            out.extend_from_slice(b"/search?q=");
            out.extend_from_slice(SEARCH_TERMS[usize::from(c)].as_bytes());
        }
        Page::Cart => out.extend_from_slice(b"/cart"),
    }
}

/// A `ts` that looks like a time but is not RFC 3339 nor an integer.
fn bad_time(out: &mut Vec<u8>, ts: i64, format: TsFormat, variant: u8) {
    let offset = match format {
        TsFormat::Offset(minutes) => minutes,
        TsFormat::Utc | TsFormat::EpochMillis => 0,
    };
    let c = Civil::from_millis(ts, offset);
    match variant {
        // Day/month/year with a space, as spreadsheets write it.
        0 => {
            push_padded(out, c.day, 2);
            out.push(b'/');
            push_padded(out, c.month, 2);
            out.push(b'/');
            push_padded(out, c.year, 4);
            out.push(b' ');
            c.push_time(out);
        }
        // RFC 3339 without its mandatory offset.
        1 => {
            c.push_date(out);
            out.push(b'T');
            c.push_time(out);
        }
        // An e-mail (RFC 2822) date.
        2 => {
            const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
            const MONTHS: [&str; 12] = [
                "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
            ];
            out.extend_from_slice(DAYS[c.days.rem_euclid(7) as usize].as_bytes());
            out.extend_from_slice(b", ");
            push_padded(out, c.day, 2);
            out.push(b' ');
            out.extend_from_slice(MONTHS[(c.month - 1) as usize].as_bytes());
            out.push(b' ');
            push_padded(out, c.year, 4);
            out.push(b' ');
            c.push_time(out);
            out.extend_from_slice(b" GMT");
        }
        // A thirteenth month.
        _ => {
            push_padded(out, c.year, 4);
            out.extend_from_slice(b"-13-");
            push_padded(out, c.day, 2);
            out.push(b'T');
            c.push_time(out);
            out.push(b'Z');
        }
    }
}

/// Bytes that are not JSON at all, in a few shapes seen in real pipelines.
fn not_json(event: &Event, variant: u8, rng: &mut impl Rng, out: &mut Vec<u8>) {
    let key = key(&event.body);
    match variant {
        // A log line written to the topic by mistake.
        0 => {
            out.extend_from_slice(b"WARN publish retry key=");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b" at ");
            push_rfc3339(out, event.ts, None);
            out.extend_from_slice(b": broker connection reset, payload dropped");
        }
        // A proxy's error page captured as the payload.
        1 => out.extend_from_slice(
            b"<html><head><title>502 Bad Gateway</title></head><body><center>\
              <h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>",
        ),
        // Binary (a UTF-16 byte-order mark, then noise): not even UTF-8.
        2 => {
            out.extend_from_slice(&[0xFF, 0xFE]);
            let len = rng.random_range(30..90u32);
            out.extend((0..len).map(|_| rng.random::<u8>()));
        }
        // Form encoding instead of JSON.
        _ => {
            out.extend_from_slice(b"event=");
            out.extend_from_slice(topic_of(&event.body).as_bytes());
            out.extend_from_slice(b"&key=");
            out.extend_from_slice(key.as_bytes());
            out.extend_from_slice(b"&ts=");
            push_i64(out, event.ts);
            out.extend_from_slice(b"&source=legacy-batch");
        }
    }
}

fn topic_of(body: &Body) -> &'static str {
    super::Topic::of(body).name()
}

/// A JSON object writer that tracks only whether a comma is due: the generator opens
/// and closes containers in strict nesting, so no stack is needed.
struct Json<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> Json<'a> {
    fn object(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Json { out, first: true }
    }

    fn separator(&mut self) {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
    }

    fn name(&mut self, name: &str) {
        self.separator();
        self.out.push(b'"');
        self.out.extend_from_slice(name.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    fn quoted(&mut self, value: &str) {
        self.out.push(b'"');
        self.out.extend_from_slice(value.as_bytes());
        self.out.push(b'"');
    }

    fn str(&mut self, name: &str, value: &str) {
        self.name(name);
        self.quoted(value);
    }

    /// `"name":"<prefix><n, zero-padded to width>"`.
    fn id(&mut self, name: &str, prefix: &str, n: u64, width: usize) {
        self.name(name);
        self.out.push(b'"');
        self.out.extend_from_slice(prefix.as_bytes());
        push_padded(self.out, n, width);
        self.out.push(b'"');
    }

    fn uint(&mut self, name: &str, value: u64) {
        self.name(name);
        push_padded(self.out, value, 0);
    }

    /// A price as a JSON number with two decimals (`59.90`).
    fn money(&mut self, name: &str, cents: u64) {
        self.name(name);
        push_padded(self.out, cents / 100, 0);
        self.out.push(b'.');
        push_padded(self.out, cents % 100, 2);
    }

    /// Opens a named container (`{` or `[`).
    fn begin(&mut self, name: &str, open: u8) {
        self.name(name);
        self.out.push(open);
        self.first = true;
    }

    /// Opens an unnamed container inside an array.
    fn element(&mut self, open: u8) {
        self.separator();
        self.out.push(open);
        self.first = true;
    }

    fn end(&mut self, close: u8) {
        self.out.push(close);
        self.first = false;
    }
}

/// "00", "01", … "99": two digits per division halves the work of integer formatting,
/// the hottest part of rendering.
const DIGIT_PAIRS: [u8; 200] = {
    let mut pairs = [0u8; 200];
    let mut i = 0;
    while i < 100 {
        pairs[2 * i] = b'0' + (i / 10) as u8;
        pairs[2 * i + 1] = b'0' + (i % 10) as u8;
        i += 1;
    }
    pairs
};

/// The decimal digits of `n`: they are `buf[start..]`.
fn digits(mut n: u64) -> ([u8; 20], usize) {
    let mut buf = [0u8; 20];
    let mut start = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        start -= 2;
        buf[start..start + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        start -= 2;
        buf[start..start + 2].copy_from_slice(&DIGIT_PAIRS[pair..pair + 2]);
    } else {
        start -= 1;
        buf[start] = b'0' + n as u8;
    }
    (buf, start)
}

/// Appends `n` in decimal, left-padded with zeros to at least `width` digits.
pub fn push_padded(out: &mut Vec<u8>, n: u64, width: usize) {
    let (buf, start) = digits(n);
    let zeros = width.saturating_sub(buf.len() - start);
    out.resize(out.len() + zeros, b'0');
    out.extend_from_slice(&buf[start..]);
}

fn push_i64(out: &mut Vec<u8>, n: i64) {
    if n < 0 {
        out.push(b'-');
    }
    push_padded(out, n.unsigned_abs(), 0);
}

fn push_hex(out: &mut Vec<u8>, n: u64, width: u32) {
    for shift in (0..width).rev() {
        out.push(b"0123456789abcdef"[((n >> (4 * shift)) & 0xF) as usize]);
    }
}

/// Appends `ms` as RFC 3339: `Z` when `offset_minutes` is `None`, else the local time
/// followed by `±HH:MM`. The fraction appears only when the milliseconds are not 0.
pub fn push_rfc3339(out: &mut Vec<u8>, ms: i64, offset_minutes: Option<i32>) {
    let offset = offset_minutes.unwrap_or(0);
    let c = Civil::from_millis(ms, offset);
    c.push_date(out);
    out.push(b'T');
    c.push_time(out);
    if c.millis != 0 {
        out.push(b'.');
        push_padded(out, c.millis, 3);
    }
    match offset_minutes {
        None => out.push(b'Z'),
        Some(minutes) => {
            out.push(if minutes < 0 { b'-' } else { b'+' });
            let abs = u64::from(minutes.unsigned_abs());
            push_padded(out, abs / 60, 2);
            out.push(b':');
            push_padded(out, abs % 60, 2);
        }
    }
}

/// A civil (proleptic Gregorian) date and time of day.
struct Civil {
    /// Days since 1970-01-01, for the weekday.
    days: i64,
    year: u64,
    month: u64,
    day: u64,
    hour: u64,
    minute: u64,
    second: u64,
    millis: u64,
}

impl Civil {
    /// The local civil time of `ms` at `offset_minutes` east of UTC. Years stay in
    /// 1969..=9999 because the configuration bounds `start` and the event count.
    fn from_millis(ms: i64, offset_minutes: i32) -> Civil {
        let local = ms + i64::from(offset_minutes) * 60_000;
        let days = local.div_euclid(MS_PER_DAY);
        let in_day = local.rem_euclid(MS_PER_DAY) as u64;
        // Days to year/month/day, counting from 0000-03-01 so that the leap day is
        // the last day of a "year" and months have a regular 153-days-per-5 pattern.
        let shifted = days + 719_468;
        let era = shifted.div_euclid(146_097);
        let day_of_era = shifted.rem_euclid(146_097);
        let year_of_era =
            (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let month_index = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * month_index + 2) / 5 + 1;
        let month = if month_index < 10 {
            month_index + 3
        } else {
            month_index - 9
        };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        Civil {
            days,
            year: year.max(0) as u64,
            month: month as u64,
            day: day as u64,
            hour: in_day / 3_600_000,
            minute: in_day / 60_000 % 60,
            second: in_day / 1_000 % 60,
            millis: in_day % 1_000,
        }
    }

    fn push_date(&self, out: &mut Vec<u8>) {
        push_padded(out, self.year, 4);
        out.push(b'-');
        push_padded(out, self.month, 2);
        out.push(b'-');
        push_padded(out, self.day, 2);
    }

    fn push_time(&self, out: &mut Vec<u8>) {
        push_padded(out, self.hour, 2);
        out.push(b':');
        push_padded(out, self.minute, 2);
        out.push(b':');
        push_padded(out, self.second, 2);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, FixedOffset, TimeZone, Utc};
    use proptest::prelude::*;

    fn rfc3339(ms: i64, offset: Option<i32>) -> String {
        let mut out = Vec::new();
        push_rfc3339(&mut out, ms, offset);
        String::from_utf8(out).expect("ASCII")
    }

    #[test]
    fn rfc3339_examples() {
        let start = 1_767_600_000_000; // 2026-01-05T08:00:00Z
        assert_eq!(rfc3339(start, None), "2026-01-05T08:00:00Z");
        assert_eq!(
            rfc3339(start + 412, Some(120)),
            "2026-01-05T10:00:00.412+02:00"
        );
        assert_eq!(
            rfc3339(start + 7, Some(-480)),
            "2026-01-05T00:00:00.007-08:00"
        );
        assert_eq!(rfc3339(start, Some(330)), "2026-01-05T13:30:00+05:30");
        assert_eq!(rfc3339(start, Some(0)), "2026-01-05T08:00:00+00:00");
        assert_eq!(
            rfc3339(start - 8 * 3_600_000 - 1, Some(-60)),
            "2026-01-04T22:59:59.999-01:00"
        );
        assert_eq!(rfc3339(951_782_400_000, None), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn bad_times_show_the_event_time_in_wrong_formats() {
        let ts = 1_767_600_000_000 + 27_000; // Monday 2026-01-05T08:00:27Z
        let expected = [
            "05/01/2026 09:00:27",
            "2026-01-05T09:00:27",
            "Mon, 05 Jan 2026 09:00:27 GMT",
            "2026-13-05T09:00:27Z",
        ];
        for (variant, expected) in expected.iter().enumerate() {
            let mut out = Vec::new();
            bad_time(&mut out, ts, TsFormat::Offset(60), variant as u8);
            let text = String::from_utf8(out).expect("ASCII");
            assert_eq!(&text, expected);
            assert!(DateTime::parse_from_rfc3339(&text).is_err(), "{text}");
        }
    }

    #[test]
    fn padded_numbers() {
        let mut out = Vec::new();
        push_padded(&mut out, 42, 6);
        out.push(b' ');
        push_padded(&mut out, 1_234_567, 3);
        out.push(b' ');
        push_padded(&mut out, u64::MAX, 0);
        out.push(b' ');
        push_padded(&mut out, 0, 0);
        out.push(b' ');
        push_padded(&mut out, 7, 2);
        out.push(b' ');
        push_padded(&mut out, 100, 0);
        out.push(b' ');
        push_i64(&mut out, -5);
        out.push(b' ');
        push_hex(&mut out, 0xABC, 6);
        assert_eq!(
            out,
            b"000042 1234567 18446744073709551615 0 07 100 -5 000abc"
        );
    }

    proptest! {
        #[test]
        fn rfc3339_round_trips_through_chrono(
            // 1970 to 2400: covers the configured range with room for long runs.
            ms in 0i64..13_569_465_600_000,
            offset in prop::option::of(-14 * 60..=14 * 60i32),
        ) {
            let text = rfc3339(ms, offset);
            let parsed = DateTime::parse_from_rfc3339(&text).expect("valid RFC 3339");
            prop_assert_eq!(parsed.timestamp_millis(), ms, "{}", text);
            let reference: DateTime<FixedOffset> = match offset {
                None => Utc.timestamp_millis_opt(ms).unwrap().fixed_offset(),
                Some(m) => FixedOffset::east_opt(m * 60)
                    .unwrap()
                    .timestamp_millis_opt(ms)
                    .unwrap(),
            };
            prop_assert_eq!(parsed.offset(), reference.offset());
            prop_assert_eq!(parsed.naive_local(), reference.naive_local());
        }
    }
}
