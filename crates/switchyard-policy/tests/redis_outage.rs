//! Spend charged while Redis is down: queued, and written once it is back,
//! against a real `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::future::Future as _;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use switchyard_policy::{
    Charge, Demand, Denied, FailureMode, FsyncPolicy, KeyRecord, LogFilter, Policy, PolicySettings, RedisSettings,
    SpendRecord, TokenUsage,
};
use switchyard_testkit::RedisServer;

const KEY: &str = "sk-outage-test-key-0123456789";
const COST: i64 = 1_500;

fn settings(url: &str, data_dir: Option<&std::path::Path>) -> PolicySettings {
    let mut record = KeyRecord::new(KEY, 0, true);
    record.key_alias = Some("outage".into());
    PolicySettings {
        redis: Some(RedisSettings {
            url: url.into(),
            prefix: "test:".into(),
            failure_mode: FailureMode::FailOpen,
            // Longer than the test's CLIENT PAUSE below.
            timeout: Duration::from_secs(3),
            hold_ttl: Duration::from_secs(60),
            settled_ttl: Duration::from_secs(3600),
            log_max_len: 1_000,
            max_queued_spend: 100_000,
        }),
        keys: vec![(KEY.into(), record)],
        data_dir: data_dir.map(std::path::Path::to_path_buf),
        fsync: FsyncPolicy::Always,
        ..PolicySettings::default()
    }
}

/// One request to model `m`, reserving ten times its cost.
fn demand() -> Demand {
    Demand {
        model: "m".into(),
        requested_as: None,
        access_groups: Vec::new(),
        end_user: None,
        unpriced: false,
        any_model: false,
        estimated_tokens: 10,
        max_cost: 10 * COST,
        request_id: None,
    }
}

/// Admits and settles one request as the gateway does.
async fn charge(policy: &Policy) {
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let demand = demand();
    let ticket = policy.admit(&principal, &demand).await.unwrap();
    let charge = Charge {
        deployment: "m-1".into(),
        usage: TokenUsage {
            prompt: 10,
            completion: 5,
            ..TokenUsage::default()
        },
        cost: COST,
        cache_hit: false,
    };
    policy.settle(ticket, charge).await.unwrap();
}

/// An answer of 1,500 tokens, far past its estimate of 10 and past a
/// 1,000-token minute.
fn long_answer() -> Charge {
    Charge {
        deployment: "m-1".into(),
        usage: TokenUsage {
            prompt: 10,
            completion: 1_490,
            ..TokenUsage::default()
        },
        cost: COST,
        cache_hit: false,
    }
}

fn pending(policy: &Policy) -> usize {
    policy.redis_status().unwrap().1
}

async fn key_spend(policy: &Policy) -> i64 {
    let keys = policy.spend_keys().await.unwrap();
    keys.iter()
        .find(|k| k.key_alias.as_deref() == Some("outage"))
        .map_or(0, |k| k.total_spend_nanos)
}

/// Makes Redis hold back writes (scripts included) for `ms`, so a replay
/// started now is still in flight when the test looks at the queue.
async fn pause_writes(url: &str, ms: u64) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("CLIENT")
        .arg("PAUSE")
        .arg(ms)
        .arg("WRITE")
        .query_async(&mut conn)
        .await
        .unwrap();
}

/// Reads through the policy's own Redis connection until it answers, so
/// its connection manager has reconnected (reads are not paused).
async fn until_reconnected(policy: &Policy) {
    for _ in 0..100 {
        if policy.spend_keys().await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the policy never reconnected to Redis");
}

/// `Policy::open` on a data directory, waiting while the previous policy
/// of this process (dropped, but its background task may still hold it
/// for a moment) releases the directory.
async fn reopen(url: &str, dir: &std::path::Path) -> Policy {
    for _ in 0..100 {
        match Policy::open(settings(url, Some(dir))).await {
            Ok(policy) => return policy,
            Err(e) if e.to_string().contains("in use by another") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{} stayed locked", dir.display());
}

// A current-thread runtime: the policy's background replay runs only when
// the test awaits.
#[tokio::test]
async fn queued_spend_leaves_the_queue_only_once_redis_has_it() {
    let mut redis = RedisServer::start();
    let policy = Policy::open(settings(&redis.url(), None)).await.unwrap();
    charge(&policy).await;
    assert_eq!(key_spend(&policy).await, COST);

    redis.stop();
    for _ in 0..3 {
        charge(&policy).await;
    }
    assert_eq!(pending(&policy), 3);

    // Still down: a flush writes nothing and keeps every record.
    policy.flush().await;
    assert_eq!(pending(&policy), 3);
    assert_eq!(policy.counters().replayed.load(Ordering::Relaxed), 0);

    redis.restart();
    // Writes wait a second: whichever replay starts first (the background
    // one, or the flush below) is still in flight when the queue is read.
    pause_writes(&redis.url(), 1_000).await;
    until_reconnected(&policy).await;
    // A replay that has started but not finished still counts every record
    // it has not written: nothing reads as drained while it is in flight.
    let mut replay = std::pin::pin!(policy.flush());
    let first = std::future::poll_fn(|cx| Poll::Ready(replay.as_mut().poll(cx))).await;
    assert!(first.is_pending(), "a replay needs Redis round trips");
    assert_eq!(pending(&policy), 3, "records left the queue before Redis took them");
    // A second flush (as at shutdown) returns only once the queue is written.
    let (_, spend_after_second) = tokio::join!(replay, async {
        policy.flush().await;
        (pending(&policy), key_spend(&policy).await)
    });
    // Redis restarted empty: it holds the three queued charges.
    assert_eq!(spend_after_second, (0, 3 * COST));
    assert_eq!(policy.counters().replayed.load(Ordering::Relaxed), 3);
}

fn spill_lines(dir: &std::path::Path) -> usize {
    std::fs::read_to_string(dir.join("pending-spend.jsonl"))
        .unwrap_or_default()
        .lines()
        .count()
}

// With a data directory, spend queued during an outage outlives the
// process: a replica stopped (or killed) before Redis came back writes it
// when it starts again.
#[tokio::test]
async fn queued_spend_survives_a_restart_with_a_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let mut redis = RedisServer::start();
    let policy = Policy::open(settings(&redis.url(), Some(dir.path()))).await.unwrap();
    charge(&policy).await;
    assert_eq!(spill_lines(dir.path()), 0, "nothing is spilled while Redis answers");
    // One process per directory.
    let second = Policy::open(settings(&redis.url(), Some(dir.path()))).await;
    let error = second.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(error.contains("in use by another Switchyard process"), "{error}");

    redis.stop();
    for _ in 0..4 {
        charge(&policy).await;
    }
    assert_eq!(pending(&policy), 4);
    assert_eq!(spill_lines(dir.path()), 4);
    // Stopped while Redis is still down: the shutdown flush writes nothing.
    policy.flush().await;
    drop(policy);

    redis.restart();
    let policy = reopen(&redis.url(), dir.path()).await;
    assert_eq!(pending(&policy), 4, "the spilled records are queued again");
    policy.flush().await;
    assert_eq!(pending(&policy), 0);
    // Redis restarted empty: it holds the four charges of the outage.
    assert_eq!(key_spend(&policy).await, 4 * COST);
    assert_eq!(spill_lines(dir.path()), 0, "a drained queue empties the file");

    // A replica killed while it replayed leaves records Redis already has
    // in the file: written again at the next start, they count once.
    let written = all_logs(&policy).await;
    let lines: String = written
        .iter()
        .filter(|r| key_spend_record(r))
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    drop(policy);
    let policy = reopen(&redis.url(), dir.path()).await;
    assert_eq!(pending(&policy), 0, "a third start has nothing left to write");
    drop(policy);
    std::fs::write(dir.path().join("pending-spend.jsonl"), &lines).unwrap();
    // Redis restarted empty: its log holds the four charges of the outage.
    assert_eq!(spill_lines(dir.path()), 4);
    let policy = reopen(&redis.url(), dir.path()).await;
    assert_eq!(pending(&policy), 4);
    policy.flush().await;
    assert_eq!(pending(&policy), 0);
    assert_eq!(
        key_spend(&policy).await,
        4 * COST,
        "a record written twice counted twice"
    );
    assert_eq!(all_logs(&policy).await.len(), 4);
}

/// Every spend record in Redis.
async fn all_logs(policy: &Policy) -> Vec<SpendRecord> {
    let filter = LogFilter {
        limit: 1_000,
        ..LogFilter::default()
    };
    policy.spend_logs(&filter).await.unwrap()
}

/// Whether `record` is a charge of the test's key.
fn key_spend_record(record: &SpendRecord) -> bool {
    record.key_alias.as_deref() == Some("outage")
}

// A spill file's unreadable lines are kept aside, not dropped, and the
// readable ones are still written.
#[tokio::test]
async fn unreadable_spilled_lines_are_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let redis = RedisServer::start();
    let policy = Policy::open(settings(&redis.url(), Some(dir.path()))).await.unwrap();
    charge(&policy).await;
    let record = all_logs(&policy).await.remove(0);
    let mut other = record.clone();
    other.request_id = "spilled-by-an-earlier-run".into();
    drop(policy);
    std::fs::write(
        dir.path().join("pending-spend.jsonl"),
        format!(
            "{{\"not\": \"a record\"}}\n{}\n",
            serde_json::to_string(&other).unwrap()
        ),
    )
    .unwrap();
    let policy = reopen(&redis.url(), dir.path()).await;
    assert_eq!(pending(&policy), 1);
    let rejected = std::fs::read_to_string(dir.path().join("pending-spend.rejected.jsonl")).unwrap();
    assert_eq!(rejected, "{\"not\": \"a record\"}\n");
    assert_eq!(spill_lines(dir.path()), 1, "the file keeps only the readable record");
    policy.flush().await;
    assert_eq!(key_spend(&policy).await, 2 * COST);
}

/// A fail_closed policy whose key may have one request in flight, with
/// Redis commands bounded by `timeout`.
async fn one_slot_fail_closed(url: &str, timeout: Duration) -> Policy {
    let mut settings = settings(url, None);
    if let Some(r) = settings.redis.as_mut() {
        r.failure_mode = FailureMode::FailClosed;
        r.timeout = timeout;
    }
    settings.keys[0].1.limits.max_parallel_requests = Some(1);
    Policy::open(settings).await.unwrap()
}

// An admission whose reply is lost (Redis answered after the timeout) must
// not keep what its script took: with one slot, the key would be locked out
// until `hold_ttl`.
#[tokio::test]
async fn a_lost_admission_reply_does_not_keep_its_slot() {
    let redis = RedisServer::start();
    let policy = one_slot_fail_closed(&redis.url(), Duration::from_millis(300)).await;
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let demand = demand();
    drop(policy.admit(&principal, &demand).await.unwrap());
    // The release of the dropped admission reaches Redis.
    policy.flush().await;

    pause_writes(&redis.url(), 1_000).await;
    let refused = policy.admit(&principal, &demand).await;
    assert!(matches!(refused, Err(Denied::Unavailable)), "{:?}", refused.err());
    // Redis runs the script once the pause ends, and the release sent
    // after it (well before `hold_ttl`).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let admitted = loop {
        let admitted = policy.admit(&principal, &demand).await;
        if admitted.is_ok() || std::time::Instant::now() > deadline {
            break admitted;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        admitted.is_ok(),
        "the lost admission kept the key's only slot: {:?}",
        admitted.err()
    );
}

// An admission given up on while its script waits in Redis (a client that
// left, a shutdown's drain that ran out) must not keep what the script takes
// once it runs: with one slot, the key would be locked out until `hold_ttl`.
#[tokio::test]
async fn an_admission_given_up_on_does_not_keep_its_slot() {
    let redis = RedisServer::start();
    let policy = one_slot_fail_closed(&redis.url(), Duration::from_secs(3)).await;
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let demand = demand();
    drop(policy.admit(&principal, &demand).await.unwrap());
    // The release of the dropped admission reaches Redis.
    policy.flush().await;

    pause_writes(&redis.url(), 1_000).await;
    let given_up = tokio::time::timeout(Duration::from_millis(300), policy.admit(&principal, &demand)).await;
    assert!(given_up.is_err(), "the admission finished while Redis was paused");
    // Redis runs the script once the pause ends, and the release sent
    // after it (well before `hold_ttl`).
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let admitted = loop {
        let admitted = policy.admit(&principal, &demand).await;
        if admitted.is_ok() || std::time::Instant::now() > deadline {
            break admitted;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        admitted.is_ok(),
        "the admission given up on kept the key's only slot: {:?}",
        admitted.err()
    );
}

// A release Redis refuses (here: scripts are not allowed for a moment, so
// it never runs) is retried with the queued spend, instead of holding the
// key's only slot until `hold_ttl` (60 s in these settings).
#[tokio::test]
async fn a_refused_release_is_retried() {
    let redis = RedisServer::start();
    let policy = one_slot_fail_closed(&redis.url(), Duration::from_millis(500)).await;
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let demand = demand();
    let ticket = policy.admit(&principal, &demand).await.unwrap();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let acl = |rules: &[&str]| {
        let mut cmd = redis::cmd("ACL");
        cmd.arg("SETUSER").arg("default");
        for rule in rules {
            cmd.arg(*rule);
        }
        cmd
    };
    let _: () = acl(&["-eval", "-evalsha"]).query_async(&mut conn).await.unwrap();
    drop(ticket);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let refused = policy.admit(&principal, &demand).await;
    assert!(matches!(refused, Err(Denied::Unavailable)), "{:?}", refused.err());
    let _: () = acl(&["+@all"]).query_async(&mut conn).await.unwrap();

    let mut admitted = policy.admit(&principal, &demand).await;
    for _ in 0..50 {
        if admitted.is_ok() {
            break;
        }
        assert!(
            matches!(admitted, Err(Denied::TooManyParallel { .. })),
            "{:?}",
            admitted.err()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        admitted = policy.admit(&principal, &demand).await;
    }
    assert!(
        admitted.is_ok(),
        "the refused release kept the key's only slot: {:?}",
        admitted.err()
    );
}

// Spend sums in Redis saturate: a total that would pass the largest integer
// stays there, and the record that took it there is still logged.
#[tokio::test]
async fn spend_sums_in_redis_saturate() {
    let redis = RedisServer::start();
    let policy = Policy::open(settings(&redis.url(), None)).await.unwrap();
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    for cost in [i64::MAX - 10, 100] {
        let ticket = policy.admit(&principal, &demand()).await.unwrap();
        let charge = Charge {
            deployment: "m-1".into(),
            usage: TokenUsage::default(),
            cost,
            cache_hit: false,
        };
        policy.settle(ticket, charge).await.unwrap();
    }
    assert_eq!(key_spend(&policy).await, i64::MAX);
    assert_eq!(all_logs(&policy).await.len(), 2);
}

// Under fail_open, the spend waiting for Redis is bounded: once
// `max_queued_spend` records wait, requests are refused (nothing is
// dropped), and served again once Redis has taken them.
#[tokio::test]
async fn queued_spend_is_bounded_by_refusing_requests() {
    let mut redis = RedisServer::start();
    let mut settings = settings(&redis.url(), None);
    if let Some(r) = settings.redis.as_mut() {
        r.timeout = Duration::from_millis(300);
        r.max_queued_spend = 2;
    }
    let policy = Policy::open(settings).await.unwrap();
    charge(&policy).await;
    redis.stop();
    charge(&policy).await;
    charge(&policy).await;
    assert_eq!(pending(&policy), 2);
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let refused = policy.admit(&principal, &demand()).await;
    assert!(matches!(refused, Err(Denied::Unavailable)), "{:?}", refused.err());
    assert_eq!(pending(&policy), 2, "nothing was dropped");

    redis.restart();
    until_reconnected(&policy).await;
    policy.flush().await;
    assert_eq!(pending(&policy), 0);
    assert!(policy.admit(&principal, &demand()).await.is_ok());
}

/// A key deleted through one replica does not come back on another during
/// a Redis outage under `fail_open`: the key cache forgets what Redis no
/// longer has.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_key_stays_out_during_an_outage() {
    let mut redis = RedisServer::start();
    let url = redis.url();
    let mut open = settings(&url, None);
    open.master_key = Some("sk-master-outage-000000000000".into());
    let a = Policy::open(open.clone()).await.unwrap();
    let b = Policy::open(open).await.unwrap();
    let body = serde_json::json!({"key_alias": "doomed"});
    let (plaintext, _) = a.generate_key(body.as_object().unwrap()).await.unwrap();
    assert!(matches!(
        b.authenticate(Some(&plaintext)).await,
        Ok(switchyard_policy::Principal::Key(_))
    ));
    a.delete_keys(std::slice::from_ref(&plaintext)).await.unwrap();
    assert!(matches!(
        b.authenticate(Some(&plaintext)).await,
        Err(Denied::InvalidKey)
    ));
    redis.stop();
    let during = b.authenticate(Some(&plaintext)).await;
    assert!(
        matches!(during, Err(Denied::InvalidKey | Denied::Unavailable)),
        "{during:?}"
    );
}

/// A key or team changed through this replica is not served from the copy
/// seen before the change during a Redis outage under `fail_open`: a key
/// blocked, or whose team was blocked, stays blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changed_here_is_not_served_from_its_old_copy_in_an_outage() {
    let mut redis = RedisServer::start();
    let mut open = settings(&redis.url(), None);
    open.master_key = Some("sk-master-outage-000000000000".into());
    let policy = Policy::open(open).await.unwrap();
    let object = |v: serde_json::Value| v.as_object().unwrap().clone();
    policy
        .new_team(&object(serde_json::json!({"team_id": "ops"})))
        .await
        .unwrap();
    let (blocked_key, _) = policy
        .generate_key(&object(serde_json::json!({"key_alias": "to-block"})))
        .await
        .unwrap();
    let (team_key, _) = policy
        .generate_key(&object(serde_json::json!({"team_id": "ops"})))
        .await
        .unwrap();
    for key in [&blocked_key, &team_key] {
        assert!(matches!(
            policy.authenticate(Some(key)).await,
            Ok(switchyard_policy::Principal::Key(_))
        ));
    }
    policy
        .update_key(&object(serde_json::json!({"key": blocked_key, "blocked": true})))
        .await
        .unwrap();
    policy
        .update_team(&object(serde_json::json!({"team_id": "ops", "blocked": true})))
        .await
        .unwrap();
    redis.stop();
    for key in [&blocked_key, &team_key] {
        let during = policy.authenticate(Some(key)).await;
        assert!(
            matches!(during, Err(Denied::Blocked { .. } | Denied::Unavailable)),
            "{during:?}"
        );
    }
}

/// The Redis store's key writes are conditional, in one step each: a
/// deleted (or regenerated) key is not brought back by a stale update, and
/// a token already taken is not overwritten.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_key_writes_are_conditional() {
    use switchyard_policy::key::KeyWrite;
    let redis = RedisServer::start();
    let url = redis.url();
    let store = switchyard_policy::redis_store::RedisStore::connect(settings(&url, None).redis.as_ref().unwrap())
        .await
        .unwrap();
    let record = KeyRecord::new("sk-redis-store-test-000001", 0, false);
    assert!(store.insert_key(&record).await.unwrap());
    assert!(!store.insert_key(&record).await.unwrap(), "the token is taken");
    let mut blocked = record.clone();
    blocked.limits.blocked = true;
    assert_eq!(store.replace_key(0, &blocked).await.unwrap(), KeyWrite::Done);
    assert!(store.key(&record.token).await.unwrap().unwrap().limits.blocked);
    assert!(store.delete_key(&record.token).await.unwrap());
    assert_eq!(
        store.replace_key(0, &record).await.unwrap(),
        KeyWrite::Missing,
        "a deleted key is not brought back"
    );
    assert!(store.key(&record.token).await.unwrap().is_none());

    // A rename moves the key in one step, once.
    assert!(store.insert_key(&record).await.unwrap());
    let taken = KeyRecord::new("sk-redis-store-test-000002", 0, false);
    assert!(store.insert_key(&taken).await.unwrap());
    let onto_taken = KeyRecord {
        token: taken.token.clone(),
        ..record.clone()
    };
    assert_eq!(
        store.rename_key(&record.token, 0, &onto_taken).await.unwrap(),
        KeyWrite::Taken
    );
    assert!(
        store.key(&record.token).await.unwrap().is_some(),
        "a refused rename keeps the old key"
    );
    // A regenerated key keeps its id under a new value.
    let new = KeyRecord {
        token: KeyRecord::new("sk-redis-store-test-000003", 0, false).token,
        ..record.clone()
    };
    assert_eq!(store.rename_key(&record.token, 0, &new).await.unwrap(), KeyWrite::Done);
    assert!(store.key(&record.token).await.unwrap().is_none());
    assert!(store.key(&new.token).await.unwrap().is_some());
    assert_eq!(
        store.rename_key(&record.token, 0, &new).await.unwrap(),
        KeyWrite::Missing,
        "the old value is gone"
    );

    // A change made from a stale read is refused, as a replace or a rename.
    let mut next = new.clone();
    next.limits.blocked = true;
    next.revision = 1;
    assert_eq!(store.replace_key(0, &next).await.unwrap(), KeyWrite::Done);
    let mut stale = new.clone();
    stale.key_alias = Some("stale".into());
    stale.revision = 1;
    assert_eq!(store.replace_key(0, &stale).await.unwrap(), KeyWrite::Changed);
    stale.token = "another-token".into();
    assert_eq!(
        store.rename_key(&new.token, 0, &stale).await.unwrap(),
        KeyWrite::Changed
    );
    let kept = store.key(&new.token).await.unwrap().unwrap();
    assert!(kept.limits.blocked && kept.key_alias.is_none() && kept.revision == 1);
    // The same value made again is another key (another `key_id`).
    let mut other = kept.clone();
    other.key_id = "key-made-again".into();
    other.revision = 2;
    assert_eq!(store.replace_key(1, &other).await.unwrap(), KeyWrite::Changed);

    // Teams: created once, changed only while they exist.
    let team = switchyard_policy::TeamRecord {
        team_id: "t1".into(),
        team_alias: None,
        created_at: 0,
        from_config: false,
        revision: 0,
        ledger_id: None,
        limits: Default::default(),
    };
    assert_eq!(store.put_team(&team, false).await.unwrap(), KeyWrite::Done);
    assert_eq!(
        store.put_team(&team, false).await.unwrap(),
        KeyWrite::Taken,
        "the id is taken"
    );
    let changed = switchyard_policy::TeamRecord {
        revision: 1,
        ..team.clone()
    };
    assert_eq!(store.put_team(&changed, true).await.unwrap(), KeyWrite::Done);
    assert_eq!(
        store.put_team(&changed, true).await.unwrap(),
        KeyWrite::Changed,
        "a change made from revision 0 is not stored over revision 1"
    );
    assert!(store.delete_team("t1").await.unwrap());
    assert_eq!(
        store.put_team(&changed, true).await.unwrap(),
        KeyWrite::Missing,
        "a deleted team is not brought back"
    );
    // The same id made again is another team.
    let again = switchyard_policy::TeamRecord {
        created_at: 5,
        ..team.clone()
    };
    assert_eq!(store.put_team(&again, false).await.unwrap(), KeyWrite::Done);
    assert_eq!(store.put_team(&changed, true).await.unwrap(), KeyWrite::Changed);
}

/// Spend queued during an outage is replayed without its token-rate
/// correction: counted on the minute Redis came back, it would limit the key
/// now for tokens used a while ago.
#[tokio::test]
async fn replayed_spend_does_not_limit_the_key_again() {
    let mut redis = RedisServer::start();
    let mut with_tpm = settings(&redis.url(), None);
    with_tpm.keys[0].1.limits.tpm_limit = Some(1_000);
    let policy = Policy::open(with_tpm).await.unwrap();
    redis.stop();
    // One answer used 1,500 tokens, far past its estimate of 10 and past
    // the key's minute.
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let ticket = policy.admit(&principal, &demand()).await.unwrap();
    let charge = long_answer();
    policy.settle(ticket, charge).await.unwrap();
    assert_eq!(pending(&policy), 1);
    // During the outage the in-process limits counted every token it used.
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let refused = policy.admit(&principal, &demand()).await;
    assert!(
        matches!(refused, Err(Denied::RateLimited { .. })),
        "{:?}",
        refused.err()
    );
    redis.restart();
    until_reconnected(&policy).await;
    policy.flush().await;
    assert_eq!(pending(&policy), 0);
    assert_eq!(key_spend(&policy).await, COST, "the spend itself is replayed");
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let admitted = policy.admit(&principal, &demand()).await;
    assert!(admitted.is_ok(), "{:?}", admitted.err());
}

/// A request admitted on the in-process limits during an outage, which
/// settles once Redis is back, does not charge Redis for the tokens those
/// limits already counted.
#[tokio::test]
async fn a_request_admitted_during_an_outage_settles_its_tokens_once() {
    let mut redis = RedisServer::start();
    let mut with_tpm = settings(&redis.url(), None);
    with_tpm.keys[0].1.limits.tpm_limit = Some(1_000);
    let policy = Policy::open(with_tpm).await.unwrap();
    redis.stop();
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let ticket = policy.admit(&principal, &demand()).await.unwrap();
    redis.restart();
    until_reconnected(&policy).await;
    // It ends with Redis back, having used 1,500 tokens.
    let charge = long_answer();
    policy.settle(ticket, charge).await.unwrap();
    policy.flush().await;
    assert_eq!(pending(&policy), 0);
    assert_eq!(key_spend(&policy).await, COST, "the spend is written to Redis");
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let admitted = policy.admit(&principal, &demand()).await;
    assert!(admitted.is_ok(), "{:?}", admitted.err());
}

/// A request Redis admitted, which settles while Redis is down, counts
/// against the budgets checked in-process during the outage.
#[tokio::test]
async fn spend_settled_during_an_outage_counts_against_its_budgets() {
    let mut redis = RedisServer::start();
    let mut budgeted = settings(&redis.url(), None);
    // Room for one reservation (10 × COST) and a little more.
    budgeted.keys[0].1.limits.max_budget = Some(20_000e-9);
    let policy = Policy::open(budgeted).await.unwrap();
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let ticket = policy.admit(&principal, &demand()).await.unwrap();
    redis.stop();
    let charge = Charge {
        deployment: "m-1".into(),
        usage: TokenUsage {
            prompt: 10,
            completion: 10,
            ..TokenUsage::default()
        },
        cost: 10 * COST,
        cache_hit: false,
    };
    policy.settle(ticket, charge).await.unwrap();
    assert_eq!(pending(&policy), 1);
    let refused = policy.admit(&principal, &demand()).await;
    assert!(
        matches!(refused, Err(Denied::BudgetExceeded { spend, .. }) if spend == 10 * COST),
        "{:?}",
        refused.err()
    );
}
