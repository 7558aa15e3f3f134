//! The bundle file format, sans-IO: tar headers, the member scan and the target.
//!
//! A bundle comes from outside the device (a USB stick, a download), so everything here
//! treats it as untrusted: sizes are checked against the file's length before anything is
//! read, offsets use checked arithmetic, and a damaged file is an [`InvalidBundle`], never
//! a panic. [`Scanner`] is the state machine the IO side drives (it says which 512-byte
//! block to read next); [`read`] and [`write`] do the same on a bundle held in memory, for
//! tests and the fuzz target.

use std::ops::Range;

use protocol::release::TargetState;

/// Size of a tar block (headers, and the unit member data is padded to).
pub const BLOCK: usize = 512;

/// Largest `target.json` accepted.
pub const MAX_TARGET_JSON: u64 = 16 << 20;

/// Largest member a bundle can hold: the 12 octal digits of a ustar size field (64 GiB).
pub const MAX_MEMBER: u64 = 8u64.pow(12) - 1;

/// Name of the member holding the target state.
pub const TARGET_MEMBER: &str = "target.json";

/// Name of the member holding the images (`docker save` output).
pub const IMAGES_MEMBER: &str = "images.tar";

/// Not a bundle, or a damaged one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidBundle(String);

/// Where one member's data lies in the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Offset of the first data byte.
    pub offset: u64,
    /// Data length in bytes.
    pub size: u64,
}

/// Where the two members of a bundle lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Index {
    /// `target.json`.
    pub target: Member,
    /// `images.tar`.
    pub images: Member,
}

/// Walks a bundle's tar headers. Ask [`Scanner::next_header`] which block to read, hand
/// it to [`Scanner::header`] (or call [`Scanner::end_of_file`] when the file ends there),
/// until `next_header` says `None`; then [`Scanner::finish`].
#[derive(Debug, Clone, Default)]
pub struct Scanner {
    next: u64,
    done: bool,
    target: Option<Member>,
    images: Option<Member>,
}

impl Member {
    /// The data's byte range.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.size
    }
}

impl Scanner {
    /// A scan from the start of the file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offset of the next header block to read, or `None` when the scan is over.
    pub fn next_header(&self) -> Option<u64> {
        (!self.done).then_some(self.next)
    }

    /// The block at [`Scanner::next_header`].
    pub fn header(&mut self, block: &[u8; BLOCK]) -> Result<(), InvalidBundle> {
        let Some((name, size)) = parse_header(block)? else {
            // End of archive.
            self.done = true;
            return Ok(());
        };
        let data = self.next + BLOCK as u64;
        let member = Member { offset: data, size };
        match name.as_str() {
            TARGET_MEMBER if size > MAX_TARGET_JSON => {
                return Err(InvalidBundle(format!("{TARGET_MEMBER} is too large")));
            }
            TARGET_MEMBER => self.target = Some(member),
            IMAGES_MEMBER => self.images = Some(member),
            _ => {}
        }
        self.next = data
            .checked_add(size)
            .and_then(|end| end.checked_add(padding_len(size)))
            .ok_or_else(|| InvalidBundle("tar member size out of range".into()))?;
        Ok(())
    }

    /// The file ended (or had less than a block left) where a header was expected.
    pub fn end_of_file(&mut self) {
        self.done = true;
    }

    /// The members found, checked to lie within a file of `file_len` bytes.
    pub fn finish(self, file_len: u64) -> Result<Index, InvalidBundle> {
        let target = self
            .target
            .ok_or_else(|| InvalidBundle(format!("no {TARGET_MEMBER}")))?;
        let images = self
            .images
            .ok_or_else(|| InvalidBundle(format!("no {IMAGES_MEMBER}")))?;
        for (name, m) in [(TARGET_MEMBER, target), (IMAGES_MEMBER, images)] {
            if m.offset
                .checked_add(m.size)
                .is_none_or(|end| end > file_len)
            {
                return Err(InvalidBundle(format!("{name} is truncated")));
            }
        }
        Ok(Index { target, images })
    }
}

/// Decodes `target.json`.
pub fn parse_target(json: &[u8]) -> Result<TargetState, InvalidBundle> {
    serde_json::from_slice(json).map_err(|e| InvalidBundle(format!("{TARGET_MEMBER}: {e}")))
}

/// Reads a bundle held in memory: its target and its images member.
pub fn read(bundle: &[u8]) -> Result<(TargetState, &[u8]), InvalidBundle> {
    let mut scan = Scanner::new();
    while let Some(at) = scan.next_header() {
        let block = usize::try_from(at)
            .ok()
            .and_then(|at| bundle.get(at..)?.get(..BLOCK));
        match block {
            Some(b) => scan.header(b.try_into().expect("a block"))?,
            None => scan.end_of_file(),
        }
    }
    let index = scan.finish(bundle.len() as u64)?;
    // `finish` checked both ranges against the length, so they fit in memory.
    let slice = |m: Member| &bundle[m.offset as usize..(m.offset + m.size) as usize];
    Ok((parse_target(slice(index.target))?, slice(index.images)))
}

/// Writes a bundle in memory (what `create_bundle` writes to a file, with mtime 0).
/// Panics if `images` is over [`MAX_MEMBER`] bytes.
pub fn write(target: &TargetState, images: &[u8]) -> Vec<u8> {
    let json = target_json(target);
    let mut out = Vec::with_capacity(4 * BLOCK + json.len() + images.len());
    for (name, data) in [(TARGET_MEMBER, &json[..]), (IMAGES_MEMBER, images)] {
        out.extend_from_slice(&header(name, data.len() as u64, 0));
        out.extend_from_slice(data);
        out.resize(out.len() + padding_len(data.len() as u64) as usize, 0);
    }
    out.resize(out.len() + 2 * BLOCK, 0);
    out
}

/// `target.json` as written into a bundle.
pub(crate) fn target_json(target: &TargetState) -> Vec<u8> {
    serde_json::to_vec_pretty(target).expect("a target state serialises")
}

/// Zero bytes after `len` data bytes up to the next block boundary.
pub(crate) fn padding_len(len: u64) -> u64 {
    (BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64
}

/// A ustar header for a regular file. `name` is one of ours (ASCII, under 100 bytes);
/// `size` is at most [`MAX_MEMBER`] (callers check).
pub(crate) fn header(name: &str, size: u64, mtime: u64) -> [u8; BLOCK] {
    assert!(size <= MAX_MEMBER, "tar member of {size} bytes");
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    // 11 digits and a NUL up to 8 GiB; above, all 12 bytes are digits (as GNU tar and
    // Docker's archive reader accept), so a large `docker save` still fits.
    let size_field = if size < 8u64.pow(11) {
        format!("{size:011o}\0")
    } else {
        format!("{size:012o}")
    };
    h[124..136].copy_from_slice(size_field.as_bytes());
    h[136..148].copy_from_slice(format!("{mtime:011o}\0").as_bytes());
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A header's name and size; `None` for an all-zero block (end of archive).
pub(crate) fn parse_header(h: &[u8; BLOCK]) -> Result<Option<(String, u64)>, InvalidBundle> {
    if h.iter().all(|b| *b == 0) {
        return Ok(None);
    }
    let mut check = *h;
    check[148..156].copy_from_slice(b"        ");
    let sum: u32 = check.iter().map(|b| u32::from(*b)).sum();
    let field = |r: Range<usize>| {
        String::from_utf8_lossy(&h[r])
            .trim_matches(|c: char| c == '\0' || c == ' ')
            .to_string()
    };
    let stored =
        octal(&field(148..156)).ok_or_else(|| InvalidBundle("bad tar checksum field".into()))?;
    if stored != u64::from(sum) {
        return Err(InvalidBundle("tar header checksum mismatch".into()));
    }
    let size = octal(&field(124..136)).ok_or_else(|| InvalidBundle("bad tar size field".into()))?;
    Ok(Some((field(0..100), size)))
}

/// An octal field: digits only (`from_str_radix` alone would take a leading `+`).
fn octal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    u64::from_str_radix(s, 8).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> TargetState {
        serde_json::from_str(r#"{"app_id":1,"app_name":"a","release":"r1","services":{},"volumes":{},"networks":{}}"#).unwrap()
    }

    #[test]
    fn headers_round_trip() {
        let h = header("target.json", 1234, 0);
        assert_eq!(
            parse_header(&h).unwrap(),
            Some(("target.json".to_string(), 1234))
        );
        let mut bad = h;
        bad[0] = b'x';
        assert!(parse_header(&bad).is_err());
        assert_eq!(parse_header(&[0; BLOCK]).unwrap(), None);
        // Images over 8 GiB need all 12 digits of the size field (this used to panic in
        // `create_bundle`: 12 digits and a NUL do not fit in 12 bytes).
        for size in [8u64.pow(11) - 1, 8u64.pow(11), 20 << 30, MAX_MEMBER] {
            let h = header("images.tar", size, 0);
            assert_eq!(
                parse_header(&h).unwrap(),
                Some(("images.tar".to_string(), size))
            );
        }
        assert_eq!(padding_len(512), 0);
        assert_eq!(padding_len(513), 511);
    }

    #[test]
    fn bundles_round_trip_in_memory() {
        let t = target();
        let bytes = write(&t, b"images");
        assert_eq!(bytes.len() % BLOCK, 0);
        let (back, images) = read(&bytes).unwrap();
        assert_eq!(back, t);
        assert_eq!(images, b"images");
    }

    #[test]
    fn damaged_bundles_are_invalid_not_panics() {
        let bytes = write(&target(), b"images");
        assert_eq!(read(&[]).unwrap_err().to_string(), "no target.json");
        // Cut inside the images member: it would be streamed into the engine short.
        let cut = 3 * BLOCK + 2;
        assert_eq!(
            read(&bytes[..cut]).unwrap_err().to_string(),
            "images.tar is truncated"
        );
        // A size that points past the end of the file.
        let mut huge = bytes.clone();
        let h = header("images.tar", 0o77777777777, 0);
        let at = 2 * BLOCK;
        huge[at..at + BLOCK].copy_from_slice(&h);
        assert!(read(&huge).is_err());
        // A size with a sign.
        let mut signed = header("x", 1, 0);
        signed[124..136].copy_from_slice(b"+0000000001\0");
        signed[148..156].copy_from_slice(b"        ");
        let sum: u32 = signed.iter().map(|b| u32::from(*b)).sum();
        signed[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        assert_eq!(
            parse_header(&signed).unwrap_err().to_string(),
            "bad tar size field"
        );
    }
}
