//! `gateway user ...`: dashboard users, managed offline in the data dir (or the
//! PostgreSQL database), like `gateway token create`; works beside a running `serve`.

use std::io::{BufRead, IsTerminal, Write};

use super::*;

#[derive(Subcommand)]
pub(super) enum UserCommand {
    /// Add a dashboard user. The password comes from --password-file, else from stdin
    /// (its first line), else it is asked for when stdin is a terminal.
    Add {
        #[command(flatten)]
        store: StoreArgs,
        /// The user's name (letters, digits, `.`, `_`, `-`, `@`; at most 64).
        name: String,
        /// viewer (read), operator (act on devices) or admin (everything).
        #[arg(long)]
        role: String,
        /// A file whose first line is the password.
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Limit the user to this fleet's devices (repeat for several fleets). Default:
        /// every fleet. A limited user's dashboard shows only these fleets' devices, and
        /// login-mode public URLs let them into these fleets' devices only.
        #[arg(long = "fleet", value_name = "FLEET")]
        fleets: Vec<String>,
    },
    /// List dashboard users (never their password hashes).
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Give a dashboard user a new password (from --password-file, stdin or the
    /// terminal, as for `add`); their dashboard sessions end at once.
    Password {
        #[command(flatten)]
        store: StoreArgs,
        /// The user's name.
        name: String,
        /// A file whose first line is the new password.
        #[arg(long)]
        password_file: Option<PathBuf>,
    },
    /// Remove a dashboard user; their dashboard sessions end at once.
    Remove {
        #[command(flatten)]
        store: StoreArgs,
        /// The user's name.
        name: String,
    },
}

pub(super) async fn run(cmd: UserCommand) -> anyhow::Result<()> {
    let cli_actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    match cmd {
        UserCommand::Add {
            store,
            name,
            role,
            password_file,
            fleets,
        } => {
            crate::users::valid_name(&name)?;
            let role = Role::parse(&role).with_context(|| {
                format!("--role must be viewer, operator or admin, not {role:?}")
            })?;
            let password = read_password(password_file.as_deref())?;
            let (_, db) =
                crate::datadir::open_existing_in(&store.data_dir, store.database()).await?;
            let added = crate::users::add(&db, &cli_actor, &name, role, &password, &fleets).await;
            db.close().await;
            added?;
            let scope = if fleets.is_empty() {
                "every fleet".to_string()
            } else {
                let mut f = fleets.clone();
                f.sort();
                f.dedup();
                format!("fleets {}", f.join(", "))
            };
            println!("user {name} ({}, {scope}) added", role.as_str());
        }
        UserCommand::List { store } => {
            let (_, db) =
                crate::datadir::open_existing_in(&store.data_dir, store.database()).await?;
            let users = db.users().await?;
            db.close().await;
            let mut table = Table::new(["NAME", "ROLE", "FLEETS", "CREATED", "LAST SIGN-IN"]);
            for u in users {
                let fleets = if u.fleets.is_empty() {
                    "(all)".to_string()
                } else {
                    u.fleets.join(",")
                };
                table.row([
                    u.name,
                    u.role,
                    fleets,
                    ago(u.created_at),
                    u.last_login.map(ago).unwrap_or_else(|| "never".into()),
                ]);
            }
            table.print();
        }
        UserCommand::Password {
            store,
            name,
            password_file,
        } => {
            let password = read_password(password_file.as_deref())?;
            let (_, db) =
                crate::datadir::open_existing_in(&store.data_dir, store.database()).await?;
            let reset = crate::users::reset_password(&db, &cli_actor, &name, &password).await;
            db.close().await;
            reset?;
            println!("user {name}: password changed; their sessions ended");
        }
        UserCommand::Remove { store, name } => {
            let (_, db) =
                crate::datadir::open_existing_in(&store.data_dir, store.database()).await?;
            let removed = crate::users::remove(&db, &cli_actor, &name).await;
            db.close().await;
            removed?;
            println!("user {name} removed");
        }
    }
    Ok(())
}

/// The password: the first line of `file`, else of stdin; asked for twice, without echo,
/// when stdin is a terminal.
fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<String> {
    if let Some(f) = file {
        let text = std::fs::read_to_string(f)
            .with_context(|| format!("cannot read --password-file {}", f.display()))?;
        return Ok(first_line(&text));
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        return Ok(first_line(&line));
    }
    let first = prompt("Password: ")?;
    let again = prompt("Again: ")?;
    if first != again {
        anyhow::bail!("the two passwords differ");
    }
    Ok(first)
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or("").to_string()
}

/// Reads one line from the terminal on stdin with echo off (restored afterwards).
fn prompt(label: &str) -> anyhow::Result<String> {
    use std::os::fd::AsFd;
    let stdin = std::io::stdin();
    let fd = stdin.as_fd();
    eprint!("{label}");
    std::io::stderr().flush().ok();
    let saved = rustix::termios::tcgetattr(fd).context("cannot read the terminal's settings")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(rustix::termios::LocalModes::ECHO);
    rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Flush, &quiet)
        .context("cannot turn off echo")?;
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    let _ = rustix::termios::tcsetattr(fd, rustix::termios::OptionalActions::Now, &saved);
    eprintln!();
    read.context("cannot read the password")?;
    Ok(first_line(&line))
}
