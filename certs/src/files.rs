//! Writing key, identity and state files crash-safely, with the right mode.

use super::*;

/// Takes an exclusive advisory lock on `dir/.certs.lock`, released when dropped.
pub(crate) fn lock_dir(dir: &Path) -> Result<fs::File, CertError> {
    let path = dir.join(".certs.lock");
    let f = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io_err(&path))?;
    f.lock().map_err(io_err(&path))?;
    Ok(f)
}

/// Writes `bytes` to `path` crash-safely: temp file (mode 0600 when `secret`, else 0644),
/// fsync, rename. A reader sees the old file or the new one, never half of one. Used for
/// every key, identity and state file the gateway and the agent write.
pub fn write_atomic(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        // The mode above applies only to a file this call creates: a temp file left by a
        // crash keeps its old mode, so set it explicitly.
        set_mode(&f, secret).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err(path))
}

/// Writes a file that must not exist yet (mode 0600 when `secret`, else 0644): fails with
/// [`CertError::Exists`] if it does, even when another process creates it at the same
/// moment. The bytes go to a temp file created with `O_EXCL`, which is then hard-linked to
/// `path` (the link fails if `path` exists), so a reader never sees half a file.
pub fn write_new(path: &Path, bytes: &[u8], secret: bool) -> Result<(), CertError> {
    let tmp = path.with_extension(format!("new.{}.{}", std::process::id(), random_hex(4)));
    let result = (|| {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(if secret { 0o600 } else { 0o644 });
        }
        let mut f = opts.open(&tmp).map_err(io_err(&tmp))?;
        set_mode(&f, secret).map_err(io_err(&tmp))?;
        f.write_all(bytes).map_err(io_err(&tmp))?;
        f.sync_all().map_err(io_err(&tmp))?;
        match fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(CertError::Exists(path.to_path_buf()))
            }
            // A file system without hard links: create the file itself exclusively.
            Err(_) => {
                let mut opts = fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::OpenOptionsExt;
                    opts.mode(if secret { 0o600 } else { 0o644 });
                }
                let mut f = opts.open(path).map_err(|e| match e.kind() {
                    std::io::ErrorKind::AlreadyExists => CertError::Exists(path.to_path_buf()),
                    _ => io_err(path)(e),
                })?;
                f.write_all(bytes).map_err(io_err(path))?;
                f.sync_all().map_err(io_err(path))
            }
        }
    })();
    let _ = fs::remove_file(&tmp);
    result?;
    // Make the new directory entry durable too.
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
    }
    Ok(())
}

pub(crate) fn set_mode(f: &fs::File, secret: bool) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(fs::Permissions::from_mode(if secret {
            0o600
        } else {
            0o644
        }))?;
    }
    #[cfg(not(unix))]
    let _ = (f, secret);
    Ok(())
}
