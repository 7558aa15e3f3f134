//! Loading and validating `gateway serve`'s configuration.

use super::*;

#[test]
fn durations() {
    assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
    assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
    assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
    assert!(parse_duration("soon").is_err());
    assert!(parse_duration("5 parsecs").is_err());
}

#[test]
fn file_keys_and_errors() {
    let cfg: ServeConfig =
        toml::from_str("domain = \"example.com\"\nidle_timeout = \"3s\"\n").unwrap();
    assert_eq!(cfg.domain, "example.com");
    assert_eq!(cfg.idle_timeout, Duration::from_secs(3));
    assert_eq!(cfg.http_listen, "0.0.0.0:80".parse().unwrap());
    assert_eq!(cfg.metrics_listen, None);
    let cfg: ServeConfig = toml::from_str("metrics_listen = \"127.0.0.1:9464\"\n").unwrap();
    assert_eq!(cfg.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    let err = toml::from_str::<ServeConfig>("domian = \"x\"").unwrap_err();
    assert!(err.to_string().contains("unknown field `domian`"), "{err}");
    let bad = ServeConfig {
        domain: "bad domain".into(),
        ..Default::default()
    };
    assert!(bad.validate().unwrap_err().to_string().contains("`domain`"));
    let cfg: ServeConfig =
        toml::from_str("allowed_origins = [\"https://console.example.com\"]\n").unwrap();
    assert_eq!(cfg.allowed_origins, ["https://console.example.com"]);
    cfg.validate().unwrap();
    let bad = ServeConfig {
        allowed_origins: vec!["console.example.com/path".into()],
        ..Default::default()
    };
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("`allowed_origins`"));
}

fn invalid(text: &str) -> String {
    match ServeConfig::from_toml(text).and_then(|c| c.validate()) {
        Ok(()) => panic!("{text:?} was accepted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn values_that_wiped_data_or_panicked_are_refused_with_the_key_named() {
    for (text, key, why) in [
        (
            "log_retention = \"99999999999999h\"",
            "log_retention",
            "maximum is 3650d",
        ),
        ("log_retention = 30", "log_retention", "minimum is 1m"),
        (
            "log_max_lines_per_device = -5",
            "log_max_lines_per_device",
            "between 1 and",
        ),
        (
            "log_max_lines_per_device = 0",
            "log_max_lines_per_device",
            "between 1 and",
        ),
        (
            "idle_timeout = \"100000000000000000s\"",
            "idle_timeout",
            "maximum is 1d",
        ),
        (
            "idle_timeout = \"100000000000000000000s\"",
            "idle_timeout",
            "too large",
        ),
        (
            "upstream_timeout = \"99999999999999999999h\"",
            "upstream_timeout",
            "too large",
        ),
        (
            "upstream_timeout = \"0s\"",
            "upstream_timeout",
            "minimum is 1ms",
        ),
        ("idle_timeout = -5", "idle_timeout", "negative"),
        (
            "max_header_bytes = 0",
            "max_header_bytes",
            "between 8192 and",
        ),
        (
            "max_header_bytes = 99999999999",
            "max_header_bytes",
            "between 8192 and",
        ),
        ("max_header_bytes = -1", "max_header_bytes", ""),
        (
            "log_prune_interval = \"0s\"",
            "log_prune_interval",
            "minimum is 100ms",
        ),
        (
            "terminal_idle_timeout = \"30d\"",
            "terminal_idle_timeout",
            "maximum is 7d",
        ),
        (
            "keep_alive = \"20s\"",
            "keep_alive",
            "shorter than idle_timeout",
        ),
    ] {
        let e = invalid(text);
        assert!(e.contains(&format!("`{key}`")), "{text}: {e}");
        assert!(e.contains(why), "{text}: {e}");
    }
    // Good values of each kind still load.
    let cfg = ServeConfig::from_toml(
        "log_retention = \"7d\"\nidle_timeout = 20\nterminal_idle_timeout = \"1h30m\"\n",
    )
    .unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.log_retention, 7 * DAY);
    assert_eq!(cfg.idle_timeout, Duration::from_secs(20));
    assert_eq!(cfg.terminal_idle_timeout, Duration::from_secs(5400));
}

#[test]
fn toml_errors_name_the_line_but_never_quote_it() {
    let secret = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7";
    let text = format!("domain = \"example.com\"\n{secret}\n");
    let e = ServeConfig::from_toml(&text)
        .unwrap_err()
        .in_file(Path::new("gw.toml"))
        .to_string();
    assert!(e.starts_with("gw.toml: line 2, column"), "{e}");
    assert!(!e.contains(secret) && !e.contains("MIIE"), "{e}");
    let e = ServeConfig::from_toml("domain = \"a.b\"\nhttp_lisen = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("line 2") && e.contains("unknown field `http_lisen`"),
        "{e}"
    );
    let e = ServeConfig::from_toml("idle_timeout = \"soon\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`idle_timeout`") && e.contains("line 1"), "{e}");
}

#[test]
fn visitor_limits() {
    let cfg: ServeConfig =
        toml::from_str("request_body_idle_timeout = \"5s\"\nmax_streams_per_device = 64\n")
            .unwrap();
    assert_eq!(cfg.request_body_idle_timeout, Duration::from_secs(5));
    assert_eq!(cfg.max_streams_per_device, 64);
    cfg.validate().unwrap();
    for n in [0, MAX_STREAMS_PER_DEVICE_CAP + 1] {
        let bad = ServeConfig {
            max_streams_per_device: n,
            ..Default::default()
        };
        let err = bad.validate().unwrap_err().to_string();
        assert!(err.contains("`max_streams_per_device`"), "{err}");
    }
    let bad = ServeConfig {
        request_body_idle_timeout: Duration::ZERO,
        ..Default::default()
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(err.contains("`request_body_idle_timeout`"), "{err}");
}

#[test]
fn limit_keys() {
    let cfg: ServeConfig = toml::from_str(
        "max_connections = 5000\nmax_connections_per_ip = 32\nconnection_idle_timeout = \"30s\"\nauth_backoff_max = \"1m\"\n",
    )
    .unwrap();
    assert_eq!(cfg.max_connections, Some(5000));
    assert_eq!(cfg.max_connections_per_ip, 32);
    assert_eq!(cfg.connection_idle_timeout, Duration::from_secs(30));
    cfg.validate().unwrap();
    assert_eq!(ServeConfig::default().max_connections, None);
    for (bad, key) in [
        ("max_connections = 0", "`max_connections`"),
        (
            "api_max_connections_per_ip = 0",
            "`api_max_connections_per_ip`",
        ),
        (
            "connection_idle_timeout = \"0s\"",
            "`connection_idle_timeout`",
        ),
        (
            "auth_backoff = \"10s\"\nauth_backoff_max = \"5s\"",
            "`auth_backoff_max`",
        ),
    ] {
        let cfg: ServeConfig = toml::from_str(bad).unwrap();
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains(key), "{bad}: {err}");
    }
}

#[test]
fn peer_link_settings_are_checked() {
    let e = invalid("peer_listen = \"127.0.0.1:7000\"");
    assert!(e.contains("peer_listen") && e.contains("database"), "{e}");
    let e = invalid("database = \"postgres://u@h/d\"\npeer_listen = \"0.0.0.0:7000\"");
    assert!(e.contains("peer_advertise"), "{e}");
    let e = invalid("database = \"postgres://u@h/d\"\npeer_advertise = \"a:1\"");
    assert!(e.contains("peer_advertise"), "{e}");
    let ok = ServeConfig::from_toml(
        "database = \"postgres://u@h/d\"\npeer_listen = \"0.0.0.0:7000\"\npeer_advertise = \"gw1.internal:7000\"",
    )
    .unwrap();
    ok.validate().unwrap();
}
