//! Live log tails across the nodes of a cluster on PostgreSQL: `gateway logs UUID -f`
//! through one node follows a device whose tunnel another node holds (`docs/cluster.md`).
//! The server is a real `postgres` started by the test set-up; without PostgreSQL
//! installed the test is skipped, and under `CI=true` it fails.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use e2e_tests::cluster::{two_nodes, TwoNodes};
use e2e_tests::*;
use edge_agent::logs::LogPipeline;

/// The messages the CLI printed, without their `[time service]` prefix.
fn messages(printed: &Mutex<Vec<String>>) -> Vec<String> {
    printed
        .lock()
        .unwrap()
        .iter()
        .map(|l| l.split("] ").nth(1).unwrap_or(l).trim().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_f_through_one_node_follows_a_device_on_another() {
    let Some(url) = gateway::store::test_pg::database_url().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let TwoNodes {
        a: _a,
        b: _b,
        api_b,
        token,
        uuid,
        device_file: out,
    } = two_nodes(dir.path(), &url).await;

    // The device's agent, with a log spool, holds its tunnel on node a only.
    let cfg = edge_agent::AgentConfig::load(&out).unwrap();
    let pipeline = LogPipeline::start(&dir.path().join("spool"), 64 << 20).unwrap();
    let mut opts = fast_agent_options("127.0.0.1:9".parse().unwrap());
    opts.logs = Some(pipeline.clone());
    let mut agent = TestAgent::spawn_with(cfg, opts);
    agent.connected().await;

    // The operator follows the device's logs with the real CLI, through node b.
    let mut cli = std::process::Command::new(bin("gateway"));
    cli.args(["logs", &uuid, "-f", "--service", "printer", "--tail", "0"])
        .env("GATEWAY_API", format!("http://127.0.0.1:{api_b}"))
        .env("GATEWAY_TOKEN", &token)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut cli = Proc::spawn(&mut cli);
    let stdout = cli.0.stdout.take().unwrap();
    let printed = Arc::new(Mutex::new(Vec::<String>::new()));
    {
        let printed = printed.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for l in std::io::BufReader::new(stdout).lines() {
                let Ok(l) = l else { break };
                printed.lock().unwrap().push(l);
            }
        });
    }

    // Lines go in one every 20 ms until the tail shows one (a plain tail starts when it
    // is opened, so the first lines may come before it), then 100 more.
    let sink = pipeline.sink();
    let push = |i: usize| sink.push(log_line("printer", format!("line {i}")));
    let mut i = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while printed.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline && i < 3000,
            "the tail through node b showed none of {i} lines the device on node a sent"
        );
        i += 1;
        push(i);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = i + 100;
    for k in i + 1..=last {
        push(k);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let want = format!("line {last}");
    let got = eventually(Duration::from_secs(30), || {
        let printed = printed.clone();
        let want = want.clone();
        async move {
            let m = messages(&printed);
            m.contains(&want).then_some(m)
        }
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "the tail through node b stopped at {:?}",
            messages(&printed).last()
        )
    });
    // Every line from the first shown to the last, once each, in order.
    let first: usize = got[0]
        .strip_prefix("line ")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a line of the device: {:?}", got[0]));
    let expected: Vec<String> = (first..=last).map(|k| format!("line {k}")).collect();
    assert_eq!(
        got, expected,
        "the tail through node b lost, repeated or reordered lines"
    );
    drop(cli);
    agent.stop().await;
}
