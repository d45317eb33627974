//! cargo fuzz run hooks: the property lives in `readtrack_fuzz::check_hooks`, shared with
//! tests/fuzz_corpus.rs so CI replays the corpus through the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| readtrack_fuzz::check_hooks(data));
