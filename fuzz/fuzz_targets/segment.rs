//! Arbitrary bytes as shared memory: the segment header and everything a process reads
//! from a segment (see `ringpipe_engine::fuzzing`). Run with
//! `cargo +nightly fuzz run segment -- -max_total_time=60`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    ringpipe_engine::fuzzing::exercise(data);
});
