//! `gateway env ...`: list, set and unset environment variables of a fleet or a device,
//! for all services or one, through the management API (`GET`/`PUT .../env`), as
//! `balena env add|rm` and `balena envs` do.

use super::*;

#[derive(Subcommand)]
pub(super) enum EnvCommand {
    /// List the variables of a fleet or a device (its own: a device's variables apply
    /// over its fleet's). SERVICE `*` means every service.
    List {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        scope: Scope,
        /// Print the API's JSON (`vars` and `services`) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Set a variable: `set NAME=VALUE` or `set NAME VALUE`; `set NAME` alone takes the
    /// value of NAME in this shell's environment. Devices get the new target at once.
    Set {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        scope: Scope,
        /// NAME=VALUE, or NAME with the value as the next argument.
        #[arg(value_name = "NAME[=VALUE]")]
        assignment: String,
        /// The value, when the first argument is a bare NAME.
        value: Option<String>,
    },
    /// Remove a variable.
    Unset {
        #[command(flatten)]
        api: ApiArgs,
        #[command(flatten)]
        scope: Scope,
        /// The variable's name.
        name: String,
    },
}

/// Whose variables: one fleet's or one device's, for all services or one.
#[derive(Args)]
pub(super) struct Scope {
    #[command(flatten)]
    owner: Owner,
    /// Only this service's variables; without it, the ones for every service.
    #[arg(long)]
    service: Option<String>,
}

/// Exactly one of `--fleet` and `--device`.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct Owner {
    /// The fleet's variables.
    #[arg(long)]
    fleet: Option<String>,
    /// The device's variables.
    #[arg(long, value_name = "UUID")]
    device: Option<DeviceUuid>,
}

impl Scope {
    /// The API path of the owner's variables.
    fn path(&self) -> String {
        match (&self.owner.fleet, &self.owner.device) {
            (_, Some(uuid)) => format!("/v1/devices/{uuid}/env"),
            (Some(fleet), None) => format!("/v1/fleets/{}/env", path_segment(fleet)),
            // clap's group makes one of them required.
            (None, None) => unreachable!("--fleet or --device is required"),
        }
    }

    /// `fleet kiosks`, `device 0123…`, with ` (service web)` when scoped.
    fn describe(&self) -> String {
        let owner = match (&self.owner.fleet, &self.owner.device) {
            (_, Some(uuid)) => format!("device {uuid}"),
            (Some(fleet), None) => format!("fleet {fleet}"),
            (None, None) => String::new(),
        };
        match &self.service {
            Some(s) => format!("{owner} (service {s})"),
            None => owner,
        }
    }

    /// The variables of this scope inside `env`, created empty when absent.
    fn vars_mut<'a>(
        &self,
        env: &'a mut types::Env,
    ) -> &'a mut std::collections::BTreeMap<String, String> {
        match &self.service {
            None => &mut env.vars,
            Some(s) => env.services.entry(s.clone()).or_default(),
        }
    }
}

pub(super) async fn run(cmd: EnvCommand) -> anyhow::Result<()> {
    match cmd {
        EnvCommand::List { api, scope, json } => {
            let env: types::Env = api.client().get(&scope.path()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&env)?);
                return Ok(());
            }
            let mut t = Table::new(["NAME", "VALUE", "SERVICE"]);
            if scope.service.is_none() {
                for (k, v) in &env.vars {
                    t.row([k.as_str(), v.as_str(), "*"]);
                }
            }
            for (svc, vars) in &env.services {
                if scope.service.as_ref().is_some_and(|s| s != svc) {
                    continue;
                }
                for (k, v) in vars {
                    t.row([k.as_str(), v.as_str(), svc.as_str()]);
                }
            }
            t.print();
        }
        EnvCommand::Set {
            api,
            scope,
            assignment,
            value,
        } => {
            let (name, value) = assignment_parts(&assignment, value)?;
            let client = api.client();
            let path = scope.path();
            // Read, change one variable, write the whole set back: the API replaces an
            // owner's variables as a whole.
            let mut env: types::Env = client.get(&path).await?;
            let old = scope.vars_mut(&mut env).insert(name.clone(), value.clone());
            let _: types::Env = client.send_json(Method::PUT, &path, &env).await?;
            let what = if old.is_some() { "updated" } else { "set" };
            println!("{name} {what} on {}", scope.describe());
        }
        EnvCommand::Unset { api, scope, name } => {
            valid_env_name(&name)?;
            let client = api.client();
            let path = scope.path();
            let mut env: types::Env = client.get(&path).await?;
            if scope.vars_mut(&mut env).remove(&name).is_none() {
                anyhow::bail!("{name} is not set on {}", scope.describe());
            }
            env.services.retain(|_, vars| !vars.is_empty());
            let _: types::Env = client.send_json(Method::PUT, &path, &env).await?;
            println!("{name} removed from {}", scope.describe());
        }
    }
    Ok(())
}

/// `NAME=VALUE`, or `NAME` and `VALUE` as two arguments, or `NAME` alone with the value
/// from this process's environment (as `balena env add` does); the name checked.
fn assignment_parts(assignment: &str, value: Option<String>) -> anyhow::Result<(String, String)> {
    let (name, value) = match (assignment.split_once('='), value) {
        (Some(_), Some(_)) => {
            anyhow::bail!("give NAME=VALUE or NAME VALUE, not both ({assignment:?} and a value)")
        }
        (Some((n, v)), None) => (n.to_string(), v.to_string()),
        (None, Some(v)) => (assignment.to_string(), v),
        (None, None) => {
            valid_env_name(assignment)?;
            let v = std::env::var(assignment).map_err(|_| {
                anyhow::anyhow!(
                    "no value for {assignment}: give NAME=VALUE or NAME VALUE (or export {assignment} in this shell)"
                )
            })?;
            (assignment.to_string(), v)
        }
    };
    valid_env_name(&name)?;
    Ok((name, value))
}

/// The API's rule (`invalid_env_name`), checked here first so that nothing is sent.
fn valid_env_name(n: &str) -> anyhow::Result<()> {
    let mut chars = n.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    anyhow::ensure!(
        ok,
        "{n:?} is not a variable name (letters, digits and _, not starting with a digit)"
    );
    Ok(())
}

/// `name` percent-encoded for one path segment (a fleet name with a `/` or `?` must
/// reach the API as that name, where the API refuses or does not find it).
fn path_segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_env_assignments_split_and_names_are_checked() {
        let parts = |a: &str, v: Option<&str>| assignment_parts(a, v.map(str::to_string));
        assert_eq!(
            parts("MODE=kiosk", None).unwrap(),
            ("MODE".into(), "kiosk".into())
        );
        // Only the first `=` splits; an empty value is a value.
        assert_eq!(parts("Q=a=b", None).unwrap(), ("Q".into(), "a=b".into()));
        assert_eq!(parts("EMPTY=", None).unwrap(), ("EMPTY".into(), "".into()));
        assert_eq!(
            parts("MODE", Some("a b")).unwrap(),
            ("MODE".into(), "a b".into())
        );
        let err = parts("MODE=x", Some("y")).unwrap_err().to_string();
        assert!(err.contains("not both"), "{err}");
        for bad in ["1ABC=x", "A-B=x", "=x", "MÖDE=x"] {
            let err = parts(bad, None).unwrap_err().to_string();
            assert!(err.contains("is not a variable name"), "{bad}: {err}");
        }
        let err = parts("CLI_ENV_TEST_SURELY_UNSET_6821", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no value for"), "{err}");
    }

    #[test]
    fn cli_env_needs_exactly_one_of_fleet_and_device() {
        let parse = |args: &[&str]| {
            let mut all = vec!["gateway", "env", "list", "--token", "t"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
                .map(drop)
                .map_err(|e| e.to_string())
        };
        let uuid = "0123456789abcdef0123456789abcdef";
        assert!(parse(&["--fleet", "kiosks"]).is_ok());
        assert!(parse(&["--fleet", "kiosks", "--service", "web"]).is_ok());
        assert!(parse(&["--device", uuid, "--service", "web"]).is_ok());
        let err = parse(&["--fleet", "kiosks", "--device", uuid]).unwrap_err();
        assert!(err.contains("cannot be used with"), "{err}");
        let err = parse(&[]).unwrap_err();
        assert!(err.contains("--fleet") && err.contains("--device"), "{err}");
        let err = parse(&["--device", "nope"]).unwrap_err();
        assert!(err.contains("nope"), "{err}");
    }

    #[test]
    fn cli_env_fleet_names_are_one_path_segment() {
        assert_eq!(path_segment("kiosks-2.a_b"), "kiosks-2.a_b");
        assert_eq!(path_segment("a/b?c"), "a%2Fb%3Fc");
    }
}
