//! `gateway support ...`: time-limited support grants (tokens for one fleet or device that
//! expire by themselves).

use super::*;

#[derive(Subcommand)]
pub(super) enum SupportCommand {
    /// Create a support grant offline in a data dir (or --database): a token that reaches
    /// only one fleet (and its devices) or one device, and expires by itself. Prints the
    /// token once; `support revoke` ends it early.
    Grant {
        #[command(flatten)]
        store: StoreArgs,
        /// The fleet the grant reaches (its paths and its devices').
        #[arg(long, conflicts_with = "device", required_unless_present = "device")]
        fleet: Option<String>,
        /// The device the grant reaches (32 hex).
        #[arg(long)]
        device: Option<String>,
        /// viewer (read) or operator (also act: actions, terminals, logs). Not admin.
        #[arg(long, default_value = "operator")]
        role: String,
        /// How long the grant lasts (1s..=30d), e.g. 4h, 2d.
        #[arg(long = "for", value_name = "DURATION", value_parser = duration_within(bounds::SUPPORT_GRANT))]
        valid_for: std::time::Duration,
        /// A label (who it is for, the ticket).
        #[arg(long, default_value = "support")]
        name: String,
    },
    /// List support grants with their scope and expiry (via the management API; the
    /// dashboard's Support page and `POST /v1/support-grants` create them too).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// End a support grant now (via the management API).
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        /// Grant id (as listed).
        id: String,
    },
}

pub(super) async fn run(cmd: SupportCommand) -> anyhow::Result<()> {
    match cmd {
        SupportCommand::Grant {
            store,
            fleet,
            device,
            role,
            valid_for,
            name,
        } => {
            let role = match Role::parse(&role) {
                Some(r @ (Role::Viewer | Role::Operator)) => r,
                Some(Role::Admin) => anyhow::bail!(
                    "--role admin is not for support grants: an admin manages tokens and keys, \
                     which no grant scoped to one fleet or device reaches; use viewer or operator"
                ),
                None => anyhow::bail!("--role must be viewer or operator, not {role:?}"),
            };
            let scope = match (fleet, device) {
                (Some(f), _) => crate::store::TokenScope::Fleet(f),
                (None, Some(d)) => {
                    let uuid: protocol::DeviceUuid = d
                        .parse()
                        .map_err(|e| anyhow::anyhow!("--device {d:?}: {e}"))?;
                    crate::store::TokenScope::Device(uuid.to_string())
                }
                (None, None) => unreachable!("clap requires --fleet or --device"),
            };
            let g = crate::create_support_grant(
                &store.data_dir,
                store.database(),
                role,
                &name,
                &scope,
                valid_for,
            )
            .await?;
            eprintln!(
                "support grant {} ({}, {}) for {}; it is shown only now:",
                g.id,
                role.as_str(),
                scope_label(&scope),
                human_secs(g.expires_at - crate::store::now_unix())
            );
            println!("{}", g.token);
        }
        SupportCommand::List { api } => {
            let tokens: Vec<types::Token> = api.client().get("/v1/support-grants").await?;
            let now = crate::store::now_unix();
            let mut table = Table::new(["ID", "ROLE", "SCOPE", "NAME", "EXPIRES", "LAST USED"]);
            for t in tokens {
                let Some(expires) = t.expires_at else {
                    continue;
                };
                let left = if expires > now {
                    format!("in {}", human_secs(expires - now))
                } else {
                    "expired".into()
                };
                table.row([
                    t.id,
                    t.role,
                    t.scope.unwrap_or_else(|| "-".into()),
                    t.name,
                    left,
                    t.last_used.map(ago).unwrap_or_else(|| "never".into()),
                ]);
            }
            table.print();
        }
        SupportCommand::Revoke { api, id } => {
            api.client()
                .delete(&format!("/v1/support-grants/{id}"))
                .await?;
            println!("support grant {id} revoked");
        }
    }
    Ok(())
}

fn scope_label(scope: &crate::store::TokenScope) -> String {
    match scope {
        crate::store::TokenScope::Fleet(f) => format!("fleet {f}"),
        crate::store::TokenScope::Device(d) => format!("device {d}"),
    }
}
