//! Any bytes → an event or a dead letter, never a panic; a dead letter renders as JSON
//! and keeps at most a bounded prefix of the record.
#![no_main]

use braid::decode::DecoderConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let decoder = DecoderConfig {
        topic: "page.viewed".into(),
        source_index: 0,
        key: "/customer_id".into(),
        time: "/ts".into(),
        id: Some("/event_id".into()),
        max_record_bytes: 1 << 20,
    }
    .build();
    match decoder.decode(0, 7, data) {
        Ok(event) => {
            // The payload is the record's one JSON object, verbatim.
            let v: serde_json::Value =
                serde_json::from_str(&event.payload).expect("payload is JSON");
            assert!(v.is_object());
            assert!(event.key.len() <= braid::decode::MAX_KEY_BYTES);
        }
        Err(dead) => {
            assert_eq!(dead.raw_len, data.len());
            assert!(dead.raw_prefix.len() <= data.len().min(braid::decode::RAW_PREFIX_LIMIT));
            let json: serde_json::Value =
                serde_json::from_slice(&dead.to_json()).expect("dead letter is JSON");
            assert_eq!(json["reason_code"], dead.reason.code());
        }
    }
});
