//! Any text → a plan or a list of problems with positions, never a panic; a valid plan
//! prints its summary and fingerprint.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match braid::topology::parse(text, "fuzz.toml") {
        Ok(plan) => {
            let _ = plan.summary();
            let _ = plan.fingerprint();
        }
        Err(errors) => {
            let shown = errors.to_string();
            assert!(!shown.is_empty());
        }
    }
});
