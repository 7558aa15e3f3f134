//! The public HTTPS certificate from an ACME CA (RFC 8555), got and renewed by the gateway.
//!
//! One wildcard certificate for `*.<domain>` covers every device host, so a fleet of
//! 10,000 devices costs one order (a certificate per host would run into a public CA's
//! rate limits). A wildcard can only be proven by DNS-01: the operator's hook command
//! publishes the TXT record, as certbot's and lego's DNS hooks do. The account, the
//! certificate and its key live in `<data-dir>/acme/`; the HTTPS listener serves them
//! through [`CertFiles`], which is told to read them again after each issuance.
//!
//! The loop: serve what is cached while it has more than `renew_before` left; otherwise
//! order a new one. A failure (a refused challenge, the CA or the hook unreachable) is
//! logged with the CA's reason and tried again later, doubling from 1 minute up to 1 hour;
//! the cached certificate, if any, is served meanwhile.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::https::CertFiles;

/// First wait after a failed issuance; doubles up to [`RETRY_MAX`].
const RETRY_MIN: Duration = Duration::from_secs(60);
const RETRY_MAX: Duration = Duration::from_secs(3600);

/// A valid certificate is looked at again at least this often (its files may have been
/// replaced, the clock may have jumped).
const RECHECK_MAX: Duration = Duration::from_secs(12 * 3600);

/// How long the CA gets to validate the challenge, and to issue after finalizing.
const ORDER_TIMEOUT: Duration = Duration::from_secs(120);

/// A hook command that has not finished in this time has failed.
const HOOK_TIMEOUT: Duration = Duration::from_secs(300);

/// What the ACME loop needs (from `acme_*` in the serve config).
#[derive(Debug, Clone)]
pub(crate) struct AcmeConfig {
    pub(crate) directory: String,
    pub(crate) dns_hook: PathBuf,
    pub(crate) email: Option<String>,
    pub(crate) root: Option<PathBuf>,
    pub(crate) renew_before: Duration,
    /// The devices' domain: the certificate is for `*.<domain>`.
    pub(crate) domain: String,
    /// `<data-dir>/acme`.
    pub(crate) dir: PathBuf,
}

impl AcmeConfig {
    pub(crate) fn cert_path(dir: &Path) -> PathBuf {
        dir.join("cert.pem")
    }

    pub(crate) fn key_path(dir: &Path) -> PathBuf {
        dir.join("key.pem")
    }

    fn account_path(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The TXT record DNS-01 asks for, as a fully qualified name.
    fn record_name(&self) -> String {
        format!("_acme-challenge.{}.", self.domain)
    }
}

/// Why an issuance failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AcmeError {
    #[error("ACME: {0}")]
    Acme(#[from] instant_acme::Error),
    #[error("the CA refused the order: {0}")]
    Refused(String),
    #[error("DNS hook {hook} {action}: {reason}")]
    Hook {
        hook: PathBuf,
        action: &'static str,
        reason: String,
    },
    #[error("{0}")]
    Files(#[from] certs::CertError),
    #[error("ACME account file {path}: {reason}")]
    Account { path: PathBuf, reason: String },
}

/// Keeps `files` holding a valid certificate until `shutdown`.
pub(crate) async fn run(cfg: AcmeConfig, files: Arc<CertFiles>, shutdown: CancellationToken) {
    let mut retry = RETRY_MIN;
    loop {
        let wait = match time_left(files.cert_path()) {
            Some((left, lifetime)) if left > renew_window(cfg.renew_before, lifetime) => {
                (left - renew_window(cfg.renew_before, lifetime)).min(RECHECK_MAX)
            }
            left => {
                let why = match left {
                    None => "there is none yet",
                    Some(_) => "it expires within acme_renew_before (or a third of its lifetime)",
                };
                info!(domain = %cfg.domain, directory = %cfg.directory, "ACME: ordering a certificate for *.{} ({why})", cfg.domain);
                let issued = tokio::select! {
                    r = issue(&cfg) => r,
                    _ = shutdown.cancelled() => return,
                };
                match issued {
                    Ok(not_after) => {
                        files.reload_and_say("issued by ACME");
                        info!(domain = %cfg.domain, expires = %unix_secs(not_after), "ACME: certificate issued");
                        retry = RETRY_MIN;
                        continue;
                    }
                    Err(e) => {
                        warn!(
                            domain = %cfg.domain,
                            error = %e,
                            retry_in = ?retry,
                            serving = if files.has_certificate() { "the previous certificate" } else { "no certificate (HTTPS handshakes fail)" },
                            "ACME: could not get a certificate"
                        );
                        let w = retry;
                        retry = (retry * 2).min(RETRY_MAX);
                        w
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Time until the certificate in `path` expires, and its whole lifetime; `None` when
/// there is no readable one.
fn time_left(path: &Path) -> Option<(Duration, Duration)> {
    let pem = std::fs::read_to_string(path).ok()?;
    let (not_before, not_after) = certs::validity(&pem).ok()?;
    let left = not_after
        .duration_since(SystemTime::now())
        .unwrap_or(Duration::ZERO);
    let lifetime = not_after
        .duration_since(not_before)
        .unwrap_or(Duration::ZERO);
    Some((left, lifetime))
}

/// How long before expiry a certificate is renewed: `renew_before`, or a third of its
/// lifetime when that is shorter, so that a CA's short-lived certificates (6 days, say)
/// are not ordered again the moment they arrive.
fn renew_window(renew_before: Duration, lifetime: Duration) -> Duration {
    renew_before.min(lifetime / 3)
}

fn unix_secs(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("unix {secs}")
}

/// One order: account, DNS-01 through the hook, finalize, and the files written. Returns
/// the new certificate's expiry.
async fn issue(cfg: &AcmeConfig) -> Result<SystemTime, AcmeError> {
    let account = account(cfg).await?;
    let wildcard = format!("*.{}", cfg.domain);
    let mut order = account
        .new_order(&NewOrder::new(&[Identifier::Dns(wildcard)]))
        .await?;
    let mut published = Vec::new();
    let mut ready = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::Refused(format!(
                        "authorization is {other:?} before any challenge"
                    )))
                }
            }
            let mut challenge = authz
                .challenge(ChallengeType::Dns01)
                .ok_or_else(|| AcmeError::Refused("the CA offers no dns-01 challenge".into()))?;
            let value = challenge.key_authorization().dns_value();
            hook(cfg, "set", &value).await?;
            published.push(value);
            challenge.set_ready().await?;
        }
        Ok::<_, AcmeError>(())
    }
    .await;
    let policy = RetryPolicy::new().timeout(ORDER_TIMEOUT);
    if ready.is_ok() {
        ready = match order.poll_ready(&policy).await {
            Ok(OrderStatus::Ready) => Ok(()),
            Ok(status) => Err(AcmeError::Refused(refusal(&mut order, status).await)),
            Err(instant_acme::Error::Api(problem)) => Err(AcmeError::Refused(problem.to_string())),
            Err(e) => Err(e.into()),
        };
    }
    // The record is removed whatever happened; a failure to remove it is only logged.
    for value in &published {
        if let Err(e) = hook(cfg, "clear", value).await {
            warn!(error = %e, "ACME: could not remove the challenge record");
        }
    }
    ready?;
    let key_pem = order.finalize().await?;
    let chain_pem = order.poll_certificate(&policy).await?;
    // Checked before it replaces anything: a pair that does not load is not written.
    certs::certified_key(&chain_pem, &key_pem)?;
    let not_after = certs::not_after(&chain_pem)?;
    std::fs::create_dir_all(&cfg.dir).map_err(|source| certs::CertError::Io {
        path: cfg.dir.clone(),
        source,
    })?;
    // Key first: a reader that sees the new certificate finds its key already there
    // (and the pair is checked before it is served).
    certs::write_atomic(&AcmeConfig::key_path(&cfg.dir), key_pem.as_bytes(), true)?;
    certs::write_atomic(
        &AcmeConfig::cert_path(&cfg.dir),
        chain_pem.as_bytes(),
        false,
    )?;
    Ok(not_after)
}

/// The CA's reasons for an order that did not become ready: each challenge's error.
async fn refusal(order: &mut instant_acme::Order, status: OrderStatus) -> String {
    let mut reasons = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(Ok(authz)) = authorizations.next().await {
        for c in &authz.challenges {
            if let Some(p) = &c.error {
                reasons.push(p.to_string());
            }
        }
    }
    if reasons.is_empty() {
        format!("the order is {status:?}")
    } else {
        format!("the order is {status:?}: {}", reasons.join("; "))
    }
}

/// The ACME account: from `account.json`, or created (and saved) on first use.
async fn account(cfg: &AcmeConfig) -> Result<Account, AcmeError> {
    let builder = || match &cfg.root {
        Some(root) => Account::builder_with_root(root),
        None => Account::builder(),
    };
    let path = cfg.account_path();
    match std::fs::read_to_string(&path) {
        Ok(json) => {
            let creds: AccountCredentials =
                serde_json::from_str(&json).map_err(|e| AcmeError::Account {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
            Ok(builder()?.from_credentials(creds).await?)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let contact = cfg.email.as_ref().map(|e| format!("mailto:{e}"));
            let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
            let (account, creds) = builder()?
                .create(
                    &NewAccount {
                        contact: &contact,
                        terms_of_service_agreed: true,
                        only_return_existing: false,
                    },
                    cfg.directory.clone(),
                    None,
                )
                .await?;
            let json = serde_json::to_vec(&creds).map_err(|e| AcmeError::Account {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            std::fs::create_dir_all(&cfg.dir).map_err(|source| certs::CertError::Io {
                path: cfg.dir.clone(),
                source,
            })?;
            certs::write_atomic(&path, &json, true)?;
            info!(account = %account.id(), "ACME: account created");
            Ok(account)
        }
        Err(e) => Err(AcmeError::Account {
            path,
            reason: e.to_string(),
        }),
    }
}

/// Runs `HOOK action NAME VALUE`; success is exit status 0.
async fn hook(cfg: &AcmeConfig, action: &'static str, value: &str) -> Result<(), AcmeError> {
    let fail = |reason: String| AcmeError::Hook {
        hook: cfg.dns_hook.clone(),
        action,
        reason,
    };
    let run = tokio::process::Command::new(&cfg.dns_hook)
        .args([action, &cfg.record_name(), value])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(HOOK_TIMEOUT, run)
        .await
        .map_err(|_| fail(format!("did not finish within {HOOK_TIMEOUT:?}")))?
        .map_err(|e| fail(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err(fail(format!("{}: {}", out.status, stderr.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_lived_certificates_are_renewed_after_two_thirds_of_their_life() {
        let day = Duration::from_secs(86_400);
        assert_eq!(renew_window(30 * day, 90 * day), 30 * day);
        assert_eq!(renew_window(30 * day, 6 * day), 2 * day);
        assert_eq!(renew_window(day, 5 * 365 * day), day);
    }
}
