//! `Frame::decode` on arbitrary bytes with the control limit and with a small limit.
//!
//! Properties: never panics; `Incomplete` consumes nothing; `Ok` consumes exactly one frame
//! and re-encodes to the same bytes, which decode to the same frame; a frame accepted
//! under a small limit is accepted identically under a larger one.
#![no_main]

use bytes::Buf;
use libfuzzer_sys::fuzz_target;
use protocol::{DecodeError, Frame, MAX_CONTROL_FRAME};

fn check(data: &[u8], limit: usize) -> Result<Frame, DecodeError> {
    let mut buf = data;
    let res = Frame::decode(&mut buf, limit);
    let consumed = data.len() - buf.len();
    match &res {
        Err(DecodeError::Incomplete) => assert_eq!(consumed, 0, "Incomplete consumed bytes"),
        Err(_) => {}
        Ok(f) => {
            assert!(f.payload.len() <= limit, "frame over the limit accepted");
            assert_eq!(consumed, f.encoded_len(), "Ok consumed the wrong number of bytes");
            let mut bytes = Vec::new();
            f.encode(&mut bytes);
            assert_eq!(&bytes[..], &data[..consumed], "re-encoding changed the bytes");
            let mut re = &bytes[..];
            let again = Frame::decode(&mut re, limit).expect("re-encoded frame decodes");
            assert_eq!(&again, f, "re-encoded frame decodes to another value");
            assert!(re.is_empty(), "re-encoded frame has trailing bytes");
        }
    }
    // Non-contiguous buffer: must behave exactly like the contiguous one.
    if !data.is_empty() {
        let split = data[data.len() - 1] as usize % (data.len() + 1);
        let (a, b) = data.split_at(split);
        let mut chain = a.chain(b);
        let res2 = Frame::decode(&mut chain, limit);
        assert_eq!(res2, res, "chunked buffer decodes differently");
        assert_eq!(chain.remaining(), buf.len(), "chunked buffer consumed differently");
    }
    res
}

fuzz_target!(|data: &[u8]| {
    let Some((&small, rest)) = data.split_first() else {
        let _ = check(data, MAX_CONTROL_FRAME);
        return;
    };
    let big = check(rest, MAX_CONTROL_FRAME);
    let small = check(rest, small as usize);
    if let Ok(f) = small {
        assert_eq!(big, Ok(f), "accepted under a small limit but not under a larger one");
    }
});
