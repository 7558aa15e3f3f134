//! `gateway device access`, `gateway fleet access` and `gateway device share`: who may
//! visit public URLs (via the management API; `docs/access.md`).

use std::time::Duration;

use protocol::duration::Bounds;

use super::*;

/// `--for` of `gateway device share`: a second to a year.
pub(super) const SHARE_FOR: Bounds = crate::config::bounds::SHARE_LINK;

/// The mode and its options, shared by `device access` and `fleet access`.
#[derive(Args)]
pub(super) struct AccessArgs {
    /// public, basic, link or login (signed-in dashboard users of the device's fleet; for a
    /// device also inherit: follow its fleet again). Without a mode, the setting in force
    /// is shown.
    mode: Option<String>,
    /// basic: the user name.
    #[arg(long)]
    user: Option<String>,
    /// basic: a file holding the password (its trailing newline is not part of it).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Client addresses allowed, checked before the mode: IPv4/IPv6 addresses or CIDRs,
    /// comma-separated (`10.0.0.0/8,::1`). Default: any address.
    #[arg(long, value_delimiter = ',')]
    allow: Vec<String>,
}

impl AccessArgs {
    /// The request body, or `None` to only show the setting.
    fn settings(self) -> anyhow::Result<Option<types::AccessSettings>> {
        let Some(mode) = self.mode else {
            if self.user.is_some() || self.password_file.is_some() || !self.allow.is_empty() {
                anyhow::bail!("--user, --password-file and --allow go with a MODE");
            }
            return Ok(None);
        };
        let password = match &self.password_file {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .with_context(|| format!("cannot read --password-file {}", p.display()))?;
                let pw = text.strip_suffix('\n').unwrap_or(&text);
                Some(pw.strip_suffix('\r').unwrap_or(pw).to_string())
            }
            None => None,
        };
        Ok(Some(types::AccessSettings {
            mode,
            user: self.user,
            password,
            allow: self.allow,
        }))
    }
}

/// `gateway device access UUID [MODE ...]`.
pub(super) async fn device(
    api: &ApiArgs,
    uuid: DeviceUuid,
    args: AccessArgs,
) -> anyhow::Result<()> {
    let path = format!("/v1/devices/{uuid}/access");
    let a: types::Access = match args.settings()? {
        Some(s) => api.client().send_json(Method::PUT, &path, &s).await?,
        None => api.client().get(&path).await?,
    };
    print(&format!("device {uuid}"), &a);
    Ok(())
}

/// `gateway fleet access NAME [MODE ...]`.
pub(super) async fn fleet(api: &ApiArgs, name: &str, args: AccessArgs) -> anyhow::Result<()> {
    let path = format!("/v1/fleets/{name}/access");
    let a: types::Access = match args.settings()? {
        Some(s) => api.client().send_json(Method::PUT, &path, &s).await?,
        None => api.client().get(&path).await?,
    };
    print(&format!("fleet {name} (default of its devices)"), &a);
    Ok(())
}

/// `gateway device share UUID --for 2h`: prints the link.
pub(super) async fn share(api: &ApiArgs, uuid: DeviceUuid, valid: Duration) -> anyhow::Result<()> {
    let body = types::NewShareLink {
        for_secs: i64::try_from(valid.as_secs().max(1)).unwrap_or(i64::MAX),
    };
    let link: types::ShareLink = api
        .client()
        .send_json(
            Method::POST,
            &format!("/v1/devices/{uuid}/share-links"),
            &body,
        )
        .await?;
    eprintln!(
        "valid for {} (until unix time {})",
        human_secs(link.expires_at - crate::store::now_unix()),
        link.expires_at
    );
    println!("{}", link.url);
    Ok(())
}

fn print(what: &str, a: &types::Access) {
    let from = match (a.source.as_str(), &a.fleet) {
        ("fleet", Some(f)) => format!("the default of fleet {f}"),
        ("device", _) => "its own setting".to_string(),
        _ => "nobody restricted it".to_string(),
    };
    println!("{what}: {} ({from})", a.mode);
    if let Some(u) = &a.user {
        println!("  user: {u}");
    }
    if !a.allow.is_empty() {
        println!("  allowed addresses: {}", a.allow.join(", "));
    }
}
