//! Any bytes through the whole per-file Policy stage (YAML, fields, entries) and through the
//! short entry form on its own: neither may panic. Run with `cargo xtask fuzz`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sbx::diag::Sources;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = sbx::policy::entry::parse_short(text);
    let mut sources = Sources::default();
    let path: std::sync::Arc<str> = "fuzz.yaml".into();
    let file = sources.add(path.to_string(), text.to_string());
    let mut diagnostics = Vec::new();
    sbx::policy::parse_document(file, &path, text, &mut diagnostics);
});
