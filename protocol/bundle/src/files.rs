//! Bundle files on disk and the engine side of them: writing a bundle from the engine's
//! images, and loading one into it. The format itself is [`crate::format`].

use std::path::Path;

use bytes::Bytes;
use futures_util::StreamExt;
use protocol::release::TargetState;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use crate::engine;
use crate::format::{self, InvalidBundle, BLOCK};

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

impl From<InvalidBundle> for BundleError {
    fn from(e: InvalidBundle) -> Self {
        Self::Invalid(e.to_string())
    }
}

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

        if images_len > format::MAX_MEMBER {
            return Err(BundleError::Invalid(format!(
                "the images are {images_len} bytes; a bundle holds at most {} bytes",
                format::MAX_MEMBER
            )));
        }
        let json = format::target_json(target);
        let mtime = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io(&tmp))?;
        f.write_all(&format::header(
            format::TARGET_MEMBER,
            json.len() as u64,
            mtime,
        ))
        .await
        .map_err(io(&tmp))?;
        f.write_all(&json).await.map_err(io(&tmp))?;
        f.write_all(&padding(json.len() as u64))
            .await
            .map_err(io(&tmp))?;
        f.write_all(&format::header(format::IMAGES_MEMBER, images_len, mtime))
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
    let file_len = f.metadata().await.map_err(io)?.len();
    // The format is untrusted input: `format::Scanner` decides which block to read and
    // checks every member against the file's length before anything is read or streamed.
    let mut scan = format::Scanner::new();
    while let Some(at) = scan.next_header() {
        let mut hdr = [0u8; BLOCK];
        f.seek(std::io::SeekFrom::Start(at)).await.map_err(io)?;
        match f.read_exact(&mut hdr).await {
            Ok(_) => scan.header(&hdr)?,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => scan.end_of_file(),
            Err(e) => return Err(io(e)),
        }
    }
    let index = scan.finish(file_len)?;
    let mut json = vec![0u8; index.target.size as usize];
    f.seek(std::io::SeekFrom::Start(index.target.offset))
        .await
        .map_err(io)?;
    f.read_exact(&mut json).await.map_err(io)?;
    let target = format::parse_target(&json)?;
    let (start, len) = (index.images.offset, index.images.size);

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
    vec![0u8; format::padding_len(len) as usize]
}
