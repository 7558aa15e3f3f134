//! `gateway key ...`: fleet provisioning keys.

use super::*;

#[derive(Subcommand)]
pub(super) enum KeyCommand {
    /// Create a provisioning key for a fleet; prints it once. It carries the gateway's
    /// tunnel address and CA fingerprint: `edge-agent provision --key KEY` needs nothing
    /// else.
    Create {
        #[command(flatten)]
        api: ApiArgs,
        /// The fleet devices provisioned with this key join.
        #[arg(long)]
        fleet: String,
        /// Expire after this long (e.g. 24h, 30m, 7d; at most 3650d). Default: never.
        #[arg(long, value_parser = duration_within(bounds::KEY_EXPIRY))]
        expires: Option<std::time::Duration>,
        /// At most this many devices. Default: unlimited.
        #[arg(long)]
        uses: Option<u32>,
    },
    /// List a fleet's keys (never their secrets).
    List {
        #[command(flatten)]
        api: ApiArgs,
        /// Fleet name.
        #[arg(long)]
        fleet: String,
    },
    /// Revoke a key by id.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        /// Key id (as listed).
        id: String,
    },
}

pub(super) async fn run(cmd: KeyCommand) -> anyhow::Result<()> {
    match cmd {
        KeyCommand::Create {
            api,
            fleet,
            expires,
            uses,
        } => {
            let body = types::NewKey {
                expires_in_secs: expires
                    .map(|d| i64::try_from(d.as_secs().max(1)).unwrap_or(i64::MAX)),
                max_uses: uses.map(i64::from),
            };
            let k: types::CreatedKey = api
                .client()
                .send_json(Method::POST, &format!("/v1/fleets/{fleet}/keys"), &body)
                .await?;
            eprintln!(
                "provisioning key {} for fleet {fleet} created; it is shown only now:",
                k.id
            );
            println!("{}", k.key);
        }
        KeyCommand::List { api, fleet } => {
            let keys: Vec<types::Key> = api
                .client()
                .get(&format!("/v1/fleets/{fleet}/keys"))
                .await?;
            let mut t = Table::new(["ID", "USES", "LIMIT", "EXPIRES", "STATE"]);
            t.right(1).right(2);
            let now = crate::store::now_unix();
            for k in keys {
                let state = if k.revoked {
                    "revoked"
                } else if k.expires_at.is_some_and(|e| e <= now) {
                    "expired"
                } else if k.max_uses.is_some_and(|m| k.uses >= m) {
                    "used up"
                } else {
                    "active"
                };
                t.row([
                    k.id,
                    k.uses.to_string(),
                    k.max_uses
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-".into()),
                    k.expires_at
                        .map(|e| {
                            if e > now {
                                format!("in {}s", e - now)
                            } else {
                                "past".into()
                            }
                        })
                        .unwrap_or_else(|| "never".into()),
                    state.into(),
                ]);
            }
            t.print();
        }
        KeyCommand::Revoke { api, id } => {
            api.client().delete(&format!("/v1/keys/{id}")).await?;
            println!("provisioning key {id} revoked");
        }
    }
    Ok(())
}
