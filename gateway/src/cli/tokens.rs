//! `gateway token ...`: API tokens.

use super::*;

#[derive(Subcommand)]
pub(super) enum TokenCommand {
    /// Create a token offline in a data dir (bootstraps the first admin; works beside a
    /// running `serve`). Prints the token once.
    Create {
        #[command(flatten)]
        store: StoreArgs,
        /// viewer (read), operator (act on devices) or admin (manage fleets and tokens).
        #[arg(long)]
        role: String,
        /// A label for the token.
        #[arg(long, default_value = "cli")]
        name: String,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Revoke a token by id.
    Revoke {
        #[command(flatten)]
        api: ApiArgs,
        /// Token id (as listed).
        id: String,
    },
}

pub(super) async fn run(cmd: TokenCommand) -> anyhow::Result<()> {
    match cmd {
        TokenCommand::Create { store, role, name } => {
            let role = Role::parse(&role).with_context(|| {
                format!("--role must be viewer, operator or admin, not {role:?}")
            })?;
            let (id, token) =
                crate::create_token(&store.data_dir, store.database(), role, &name).await?;
            eprintln!(
                "token {id} ({}) created; it is shown only now:",
                role.as_str()
            );
            println!("{token}");
        }
        TokenCommand::List { api } => {
            let tokens: Vec<types::Token> = api.client().get("/v1/tokens").await?;
            let mut table = Table::new(["ID", "ROLE", "NAME", "LAST USED"]);
            for t in tokens {
                table.row([
                    t.id,
                    t.role,
                    t.name,
                    t.last_used.map(ago).unwrap_or_else(|| "never".into()),
                ]);
            }
            table.print();
        }
        TokenCommand::Revoke { api, id } => {
            api.client().delete(&format!("/v1/tokens/{id}")).await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}
