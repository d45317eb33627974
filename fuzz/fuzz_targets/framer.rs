//! cargo fuzz run framer: the property lives in `readtrack_fuzz::check_framer`, shared with
//! tests/fuzz_corpus.rs so CI replays the corpus through the same code.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| readtrack_fuzz::check_framer(data));
