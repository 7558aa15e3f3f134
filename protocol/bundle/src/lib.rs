//! Offline bundles: one file that carries a target state and its images, for devices
//! that never see the network.
//!
//! The file is a plain ustar archive with two members, in this order:
//!
//! * `target.json`: the [`TargetState`] as JSON;
//! * `images.tar`: the images, exactly as the engine's `docker save` writes them.
//!
//! It is written to a temp file next to the destination, synced and renamed, so a crash
//! leaves the old bundle or the new one, never a torn file.
//!
//! Both sides use this crate: the gateway's `gateway bundle create` writes bundles, the
//! agent's `edge-agent preload` loads them; [`engine`] is the small engine client both
//! need (the agent's reconciler builds on it).
#![warn(missing_docs)]

pub mod engine;

use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt;
use protocol::release::TargetState;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

/// What [`create_bundle`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleSummary {
    /// Release in the bundle.
    pub release: String,
    /// Images exported.
    pub images: Vec<String>,
    /// Bundle size in bytes.
    pub bytes: u64,
}

/// Why a bundle could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Engine error (connect, export, load).
    #[error("engine: {0}")]
    Engine(#[from] bollard::errors::Error),
    /// File error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: std::io::Error,
    },
    /// Not a bundle, or a damaged one.
    #[error("invalid bundle: {0}")]
    Invalid(String),
}

const BLOCK: usize = 512;

/// Writes a bundle of `target` and its images (taken from the engine at
/// `engine_socket`, which must have them all) to `out`.
pub async fn create_bundle(
    engine_socket: &str,
    target: &TargetState,
    out: &Path,
) -> Result<BundleSummary, BundleError> {
    let docker = engine::connect(engine_socket).await?;
    let images: Vec<String> = target
        .services
        .values()
        .map(|s| s.image.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for image in &images {
        if !engine::has_image(&docker, image).await? {
            return Err(BundleError::Invalid(format!(
                "image {image} is not in the engine; pull it first"
            )));
        }
    }
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| BundleError::Io { path, source }
    };
    let pid = std::process::id();
    let images_tmp = out.with_extension(format!("images.tmp.{pid}"));
    let tmp = out.with_extension(format!("tmp.{pid}"));

    // docker save → a temp file (its size goes in the tar header before the data).
    let result = async {
        let mut f = tokio::fs::File::create(&images_tmp)
            .await
            .map_err(io(&images_tmp))?;
        let refs: Vec<&str> = images.iter().map(String::as_str).collect();
        let mut stream = docker.export_images(&refs);
        while let Some(chunk) = stream.next().await {
            f.write_all(&chunk?).await.map_err(io(&images_tmp))?;
        }
        f.flush().await.map_err(io(&images_tmp))?;
        drop(f);
        let images_len = tokio::fs::metadata(&images_tmp)
            .await
            .map_err(io(&images_tmp))?
            .len();

        let json = serde_json::to_vec_pretty(target).expect("a target state serialises");
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        f.write_all(&header("target.json", json.len() as u64))
            .await
            .map_err(io(&tmp))?;
        f.write_all(&json).await.map_err(io(&tmp))?;
        f.write_all(&padding(json.len() as u64))
            .await
            .map_err(io(&tmp))?;
        f.write_all(&header("images.tar", images_len))
            .await
            .map_err(io(&tmp))?;
        let mut src = tokio::fs::File::open(&images_tmp)
            .await
            .map_err(io(&images_tmp))?;
        tokio::io::copy(&mut src, &mut f).await.map_err(io(&tmp))?;
        f.write_all(&padding(images_len)).await.map_err(io(&tmp))?;
        // End of archive: two zero blocks.
        f.write_all(&[0u8; 2 * BLOCK]).await.map_err(io(&tmp))?;
        f.sync_all().await.map_err(io(&tmp))?;
        drop(f);
        tokio::fs::rename(&tmp, out).await.map_err(io(out))?;
        if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
            // Make the rename itself durable.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok::<_, BundleError>(())
    }
    .await;
    let _ = tokio::fs::remove_file(&images_tmp).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    result?;
    let bytes = tokio::fs::metadata(out).await.map_err(io(out))?.len();
    Ok(BundleSummary {
        release: target.release.clone(),
        images,
        bytes,
    })
}

/// Loads a bundle's images into the engine at `engine_socket` and returns its target,
/// for the caller to apply (pinned) with the agent's reconciler (`set_pinned_target`).
pub async fn preload(engine_socket: &str, bundle: &Path) -> Result<TargetState, BundleError> {
    let io = |source| BundleError::Io {
        path: bundle.display().to_string(),
        source,
    };
    let mut f = tokio::fs::File::open(bundle).await.map_err(io)?;
    let mut target: Option<TargetState> = None;
    let mut images: Option<(u64, u64)> = None;
    let mut offset = 0u64;
    loop {
        let mut hdr = [0u8; BLOCK];
        match f.read_exact(&mut hdr).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(io(e)),
        }
        offset += BLOCK as u64;
        if hdr.iter().all(|b| *b == 0) {
            break;
        }
        let (name, size) = parse_header(&hdr)?;
        match name.as_str() {
            "target.json" => {
                if size > 16 << 20 {
                    return Err(BundleError::Invalid("target.json is too large".into()));
                }
                let mut json = vec![0u8; size as usize];
                f.read_exact(&mut json).await.map_err(io)?;
                target = Some(
                    serde_json::from_slice(&json)
                        .map_err(|e| BundleError::Invalid(format!("target.json: {e}")))?,
                );
            }
            "images.tar" => images = Some((offset, size)),
            _ => {}
        }
        offset += size + padding(size).len() as u64;
        f.seek(std::io::SeekFrom::Start(offset)).await.map_err(io)?;
    }
    let target = target.ok_or_else(|| BundleError::Invalid("no target.json".into()))?;
    let (start, len) = images.ok_or_else(|| BundleError::Invalid("no images.tar".into()))?;

    let docker = engine::connect(engine_socket).await?;
    let mut f = tokio::fs::File::open(bundle).await.map_err(io)?;
    f.seek(std::io::SeekFrom::Start(start)).await.map_err(io)?;
    let body = futures_util::stream::unfold((f, len), |(mut f, left)| async move {
        if left == 0 {
            return None;
        }
        let mut buf = vec![0u8; (64 * 1024).min(left as usize)];
        match f.read(&mut buf).await {
            Ok(0) => Some((
                Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "bundle truncated",
                )),
                (f, 0),
            )),
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(Bytes::from(buf)), (f, left - n as u64)))
            }
            Err(e) => Some((Err(e), (f, 0))),
        }
    });
    let opts = bollard::query_parameters::ImportImageOptionsBuilder::new()
        .quiet(true)
        .build();
    let mut load = docker.import_image_stream(opts, body, None);
    while let Some(info) = load.next().await {
        info?;
    }
    for s in target.services.values() {
        if !engine::has_image(&docker, &s.image).await? {
            return Err(BundleError::Invalid(format!(
                "image {} missing after loading the bundle",
                s.image
            )));
        }
    }
    Ok(target)
}

fn padding(len: u64) -> Vec<u8> {
    vec![0u8; ((BLOCK as u64 - len % BLOCK as u64) % BLOCK as u64) as usize]
}

fn header(name: &str, size: u64) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    let mtime = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    h[136..148].copy_from_slice(format!("{mtime:011o}\0").as_bytes());
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn parse_header(h: &[u8; BLOCK]) -> Result<(String, u64), BundleError> {
    let mut check = *h;
    check[148..156].copy_from_slice(b"        ");
    let sum: u32 = check.iter().map(|b| u32::from(*b)).sum();
    let field = |r: std::ops::Range<usize>| {
        String::from_utf8_lossy(&h[r])
            .trim_matches(|c: char| c == '\0' || c == ' ')
            .to_string()
    };
    let stored = u32::from_str_radix(&field(148..156), 8)
        .map_err(|_| BundleError::Invalid("bad tar checksum field".into()))?;
    if stored != sum {
        return Err(BundleError::Invalid("tar header checksum mismatch".into()));
    }
    let size = u64::from_str_radix(&field(124..136), 8)
        .map_err(|_| BundleError::Invalid("bad tar size field".into()))?;
    Ok((field(0..100), size))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip() {
        let h = header("target.json", 1234);
        assert_eq!(parse_header(&h).unwrap(), ("target.json".to_string(), 1234));
        let mut bad = h;
        bad[0] = b'x';
        assert!(parse_header(&bad).is_err());
        assert_eq!(padding(512).len(), 0);
        assert_eq!(padding(513).len(), 511);
    }
}
