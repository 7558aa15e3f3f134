//! `StreamHeader::decode` on arbitrary bytes, contiguous and split into two chunks.
//!
//! Properties: never panics; `Incomplete` consumes nothing; `Ok` consumes exactly the
//! header (4-byte prefix + declared payload) and re-encodes to bytes that decode to the
//! same value; a non-contiguous buffer decodes exactly like a contiguous one.
#![no_main]

use bytes::Buf;
use libfuzzer_sys::fuzz_target;
use protocol::{DecodeError, StreamHeader};

fuzz_target!(|data: &[u8]| {
    let mut buf = data;
    let res = StreamHeader::decode(&mut buf);
    let consumed = data.len() - buf.len();
    match &res {
        Err(DecodeError::Incomplete) => assert_eq!(consumed, 0, "Incomplete consumed bytes"),
        Err(_) => {}
        Ok(h) => {
            let declared = u16::from_be_bytes([data[2], data[3]]) as usize;
            assert_eq!(consumed, 4 + declared, "Ok consumed the wrong number of bytes");
            let Ok(bytes) = h.to_vec() else {
                // Re-encoding may legitimately grow a payload past the limit
                // (e.g. `1e15` re-serialises as `1000000000000000.0`); that is an
                // encode error now, never a panic.
                return;
            };
            let mut re = &bytes[..];
            let again = StreamHeader::decode(&mut re).expect("re-encoded header decodes");
            assert_eq!(&again, h, "re-encoded header decodes to another value");
            assert!(re.is_empty(), "re-encoded header has trailing bytes");
        }
    }

    // The same bytes as two chunks (split point chosen from the input) must decode the same.
    if !data.is_empty() {
        let split = data[0] as usize % (data.len() + 1);
        let (a, b) = data.split_at(split);
        let mut chain = a.chain(b);
        let res2 = StreamHeader::decode(&mut chain);
        assert_eq!(res2, res, "chunked buffer decodes differently");
        assert_eq!(chain.remaining(), buf.len(), "chunked buffer consumed differently");
    }
});
