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
            let v = api
                .client()
                .call(
                    Method::POST,
                    &format!("/v1/fleets/{fleet}/keys"),
                    Some(json!({
                        "expires_in_secs": expires.map(|d| d.as_secs().max(1)),
                        "max_uses": uses,
                    })),
                )
                .await?;
            eprintln!(
                "provisioning key {} for fleet {fleet} created; it is shown only now:",
                v["id"].as_str().unwrap_or("?")
            );
            println!("{}", v["key"].as_str().unwrap_or_default());
        }
        KeyCommand::List { api, fleet } => {
            let v = api
                .client()
                .call(Method::GET, &format!("/v1/fleets/{fleet}/keys"), None)
                .await?;
            println!(
                "{:<10}  {:>5}  {:>8}  {:<10}  STATE",
                "ID", "USES", "LIMIT", "EXPIRES"
            );
            let now = crate::store::now_unix();
            for k in v.as_array().into_iter().flatten() {
                let state = if k["revoked"] == true {
                    "revoked"
                } else if k["expires_at"].as_i64().is_some_and(|e| e <= now) {
                    "expired"
                } else if k["max_uses"]
                    .as_i64()
                    .is_some_and(|m| k["uses"].as_i64() >= Some(m))
                {
                    "used up"
                } else {
                    "active"
                };
                println!(
                    "{:<10}  {:>5}  {:>8}  {:<10}  {state}",
                    k["id"].as_str().unwrap_or("?"),
                    k["uses"],
                    k["max_uses"]
                        .as_i64()
                        .map(|m| m.to_string())
                        .unwrap_or_else(|| "-".into()),
                    k["expires_at"]
                        .as_i64()
                        .map(|e| if e > now {
                            format!("in {}s", e - now)
                        } else {
                            "past".into()
                        })
                        .unwrap_or_else(|| "never".into()),
                );
            }
        }
        KeyCommand::Revoke { api, id } => {
            api.client()
                .call(Method::DELETE, &format!("/v1/keys/{id}"), None)
                .await?;
            println!("provisioning key {id} revoked");
        }
    }
    Ok(())
}
