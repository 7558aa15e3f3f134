//! The offline bundle reader (`bundle::format`; a bundle is an untrusted file from a USB
//! stick or a download) on arbitrary bytes.
//!
//! Input: one flag byte, then the file. With the flag's low bit set, the checksum of every
//! header the scanner visits is fixed up first, so that the fuzzer gets past the checksum
//! and reaches member layouts and `target.json`. Properties: never panics (no huge
//! allocation, no overflow, no slice out of range); an accepted bundle's images lie within
//! the file; writing the target and images back out gives a bundle that reads back to the
//! same target and images.
#![no_main]

use bundle::format::{self, Scanner, BLOCK};
use libfuzzer_sys::fuzz_target;

/// Rewrites the checksum field of each header block the scanner will look at.
fn fix_checksums(buf: &mut [u8]) {
    let mut scan = Scanner::new();
    while let Some(at) = scan.next_header() {
        let at = at as usize;
        let Some(block) = buf.get_mut(at..).and_then(|b| b.get_mut(..BLOCK)) else {
            return;
        };
        if block.iter().any(|b| *b != 0) {
            block[148..156].copy_from_slice(b"        ");
            let sum: u32 = block.iter().map(|b| u32::from(*b)).sum();
            block[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        }
        let block: &[u8; BLOCK] = (&*block).try_into().expect("a block");
        if scan.header(block).is_err() {
            return;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flag, file)) = data.split_first() else {
        return;
    };
    let mut file = file.to_vec();
    if flag & 1 == 1 {
        fix_checksums(&mut file);
    }
    let Ok((target, images)) = format::read(&file) else {
        return;
    };
    let start = images.as_ptr() as usize - file.as_ptr() as usize;
    assert!(start + images.len() <= file.len());
    let written = format::write(&target, images);
    let (back, back_images) = format::read(&written).expect("a written bundle reads back");
    assert_eq!(back, target);
    assert_eq!(back_images, images);
});
