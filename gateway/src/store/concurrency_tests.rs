//! Many writers on one real store at once, on SQLite and on PostgreSQL: log ingest, action
//! creation and device registration side by side, as during a reconnect storm, and
//! releases uploaded to one fleet in parallel. Every write must succeed (no `database is
//! locked`, SQLite codes 5/517; no deadlock or unique violation on PostgreSQL) and every
//! row must be there afterwards.

use protocol::{DeviceUuid, LogLine};

use super::test_pg::both_backends;
use super::{Store, StoreError};

const LOG_TASKS: usize = 16;
const BATCHES: u64 = 12;
const LINES_PER_BATCH: u64 = 40;
const ACTION_TASKS: usize = 8;
const ACTIONS_PER_TASK: usize = 15;
const REGISTER_TASKS: usize = 4;
const REGISTRATIONS_PER_TASK: usize = 15;

fn uuid(kind: u8, n: usize) -> DeviceUuid {
    let mut b = [0u8; 16];
    b[0] = kind;
    b[8..16].copy_from_slice(&(n as u64).to_be_bytes());
    DeviceUuid::from_bytes(b)
}

fn batch(first_seq: u64) -> Vec<LogLine> {
    (first_seq..first_seq + LINES_PER_BATCH)
        .map(|seq| LogLine {
            seq,
            timestamp: 1_700_000_000_000 + seq as i64,
            message: format!("line {seq}"),
            is_std_err: false,
            is_system: false,
            service_name: Some("main".into()),
            service_id: None,
        })
        .collect()
}

/// Collapses a failure to what the test reports: locked or something else.
fn describe(e: &StoreError) -> String {
    let s = e.to_string();
    if s.contains("locked") || s.contains("busy") {
        format!("LOCKED: {s}")
    } else {
        s
    }
}

both_backends! {
    async fn concurrent_writers_never_see_database_is_locked(store) {
        storm(store).await
    }

    async fn parallel_release_uploads_get_distinct_consecutive_seqs(store) {
        releases_in_parallel(store).await
    }

    async fn parallel_replacements_of_one_devices_tags_and_env_all_succeed(store) {
        replacements_in_parallel(store).await
    }
}

async fn storm(store: Store) {
    store.create_fleet("storm", false).await.unwrap();
    // Devices that ship logs and receive actions exist first, as they do in production.
    for n in 0..LOG_TASKS.max(ACTION_TASKS) {
        store.add_device(uuid(1, n), false).await.unwrap();
    }

    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..LOG_TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let device = uuid(1, n);
            let mut errors = Vec::new();
            for b in 0..BATCHES {
                match store
                    .insert_logs(device, "epoch-1", &batch(1 + b * LINES_PER_BATCH))
                    .await
                {
                    Ok((upto, stored)) => {
                        assert_eq!(upto, (b + 1) * LINES_PER_BATCH);
                        assert_eq!(stored.len() as u64, LINES_PER_BATCH);
                    }
                    Err(e) => errors.push(format!("insert_logs: {}", describe(&e))),
                }
            }
            errors
        });
    }
    for n in 0..ACTION_TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut errors = Vec::new();
            for i in 0..ACTIONS_PER_TASK {
                let id = format!("act_{n}_{i}");
                let params = serde_json::json!({"i": i});
                if let Err(e) = store
                    .create_action(&id, uuid(1, n), "blink", &params, "test", 3600)
                    .await
                {
                    errors.push(format!("create_action: {}", describe(&e)));
                }
                // The tunnel marks deliveries while actions are created.
                if let Err(e) = store.action_delivered(&id).await {
                    errors.push(format!("action_delivered: {}", describe(&e)));
                }
            }
            errors
        });
    }
    for n in 0..REGISTER_TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            let mut errors = Vec::new();
            for i in 0..REGISTRATIONS_PER_TASK {
                let u = uuid(2, n * 1000 + i);
                if let Err(e) = store.register_device(u, Some("storm")).await {
                    errors.push(format!("register_device: {}", describe(&e)));
                }
                // Renaming and tagging are read-then-write transactions too.
                if let Err(e) = store.update_device(u, Some("renamed"), None).await {
                    errors.push(format!("update_device: {}", describe(&e)));
                }
                if let Err(e) = store
                    .set_tags(u, &[("batch".to_string(), n.to_string())])
                    .await
                {
                    errors.push(format!("set_tags: {}", describe(&e)));
                }
            }
            errors
        });
    }
    let mut errors = Vec::new();
    while let Some(r) = tasks.join_next().await {
        errors.extend(r.expect("writer task panicked"));
    }
    assert!(
        errors.is_empty(),
        "{} writes failed, e.g. {:?}",
        errors.len(),
        &errors[..errors.len().min(5)]
    );

    // Every row is there.
    for n in 0..LOG_TASKS {
        let device = uuid(1, n);
        assert_eq!(
            store.log_resume(device, "epoch-1").await.unwrap(),
            BATCHES * LINES_PER_BATCH
        );
        let lines = store
            .query_logs(
                device,
                &super::LogQuery {
                    limit: Some(10_000),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let seqs: Vec<u64> = lines.iter().map(|l| l.line.seq).collect();
        let want: Vec<u64> = (1..=BATCHES * LINES_PER_BATCH).collect();
        assert_eq!(seqs, want, "device {n}: lines missing or repeated");
    }
    for n in 0..ACTION_TASKS {
        let actions = store.device_actions(uuid(1, n), 1000).await.unwrap();
        assert_eq!(actions.len(), ACTIONS_PER_TASK, "actions of device {n}");
        assert!(actions.iter().all(|a| a.status == "delivered"));
    }
    let fleet_devices = store
        .devices()
        .await
        .unwrap()
        .into_iter()
        .filter(|d| d.fleet.as_deref() == Some("storm"))
        .count();
    assert_eq!(fleet_devices, REGISTER_TASKS * REGISTRATIONS_PER_TASK);
}

/// Release uploads at once.
const RELEASE_TASKS: usize = 24;

async fn releases_in_parallel(store: Store) {
    store.create_fleet("rel", false).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..RELEASE_TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            // Distinct content each, plus every task racing to upload one shared file.
            let own = store
                .create_release("rel", &format!("own {n}"), &format!("h{n}"), "t")
                .await;
            let shared = store.create_release("rel", "shared", "h-shared", "t").await;
            (
                own.map_err(|e| describe(&e)),
                shared.map_err(|e| describe(&e)),
            )
        });
    }
    let mut created_shared = 0;
    let mut shared_ids = std::collections::BTreeSet::new();
    while let Some(r) = tasks.join_next().await {
        let (own, shared) = r.expect("release task panicked");
        let (_, created) = own.expect("create_release failed");
        assert!(created);
        let (rec, created) = shared.expect("create_release of the shared file failed");
        created_shared += usize::from(created);
        shared_ids.insert((rec.id, rec.seq));
    }
    assert_eq!(
        created_shared, 1,
        "the shared file was stored more than once"
    );
    assert_eq!(shared_ids.len(), 1);
    let mut seqs: Vec<i64> = store
        .releases("rel")
        .await
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect();
    seqs.sort_unstable();
    let want: Vec<i64> = (1..=RELEASE_TASKS as i64 + 1).collect();
    assert_eq!(seqs, want, "release seqs repeated or skipped");
}

/// Replacements of one device's tags and env vars at once.
const REPLACE_TASKS: usize = 12;

async fn replacements_in_parallel(store: Store) {
    let device = uuid(3, 0);
    store.add_device(device, false).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..REPLACE_TASKS {
        let store = store.clone();
        tasks.spawn(async move {
            // Delete-then-insert of the same keys: without a lock on PostgreSQL, two of
            // these collide on the primary key.
            let tags = vec![
                ("a".to_string(), n.to_string()),
                ("b".to_string(), n.to_string()),
            ];
            let vars = vec![(String::new(), "X".to_string(), n.to_string())];
            let t = store
                .set_tags(device, &tags)
                .await
                .map_err(|e| describe(&e));
            let v = store
                .set_env("device", device.as_str(), &vars)
                .await
                .map_err(|e| describe(&e));
            (t, v)
        });
    }
    while let Some(r) = tasks.join_next().await {
        let (t, v) = r.expect("replacement task panicked");
        t.expect("set_tags failed");
        v.expect("set_env failed");
    }
    let tags = store.tags(device).await.unwrap();
    assert_eq!(tags.len(), 2);
    assert_eq!(tags[0].1, tags[1].1, "one replacement's tags, not a mix");
    assert_eq!(store.env("device", device.as_str()).await.unwrap().len(), 1);
}

/// Reads go on while writers queue: a write transaction is held open and more writers
/// than SQLite's pool has connections wait behind it, yet a request that only reads
/// answers at once (during a reconnect storm every connect writes its route, and the
/// management API must stay responsive). Before the readers had a pool of their own,
/// the waiting writers held every pooled connection inside SQLite's busy handler and the
/// read waited for them.
#[tokio::test]
async fn reads_answer_while_writers_queue_behind_a_held_write() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let d = uuid(9, 0);
    store.add_device(d, false).await.unwrap();
    let held = store.write_tx(&[]).await.unwrap();
    let writers: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            tokio::spawn(async move { store.set_online(uuid(9, 0), i % 2 == 0).await })
        })
        .collect();
    // Let the writers reach their queue (a yield is not enough for the spawned tasks on
    // a multi-threaded runtime; a short bounded wait for none of them to finish is).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(
        writers.iter().all(|w| !w.is_finished()),
        "a writer finished while a write transaction was held"
    );
    let read = tokio::time::timeout(std::time::Duration::from_secs(3), store.device(d)).await;
    let record = read
        .expect("a read waited behind queued writers")
        .unwrap()
        .expect("device");
    assert_eq!(record.uuid, d);
    held.commit().await.unwrap();
    for w in writers {
        w.await.unwrap().unwrap();
    }
}
