//! Spend charged while Redis is down: queued, and written once it is back,
//! against a real `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::future::Future as _;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::Duration;

use switchyard_policy::{
    Charge, Demand, FailureMode, FsyncPolicy, KeyRecord, Policy, PolicySettings, RedisSettings, TokenUsage,
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
            timeout: Duration::from_millis(300),
            hold_ttl: Duration::from_secs(60),
            log_max_len: 1_000,
        }),
        keys: vec![(KEY.into(), record)],
        data_dir: data_dir.map(std::path::Path::to_path_buf),
        fsync: FsyncPolicy::Always,
        ..PolicySettings::default()
    }
}

/// Admits and settles one request as the gateway does.
async fn charge(policy: &Policy) {
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let demand = Demand {
        model: "m".into(),
        estimated_tokens: 10,
        max_cost: 10 * COST,
        request_id: None,
    };
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

fn pending(policy: &Policy) -> usize {
    policy.redis_status().unwrap().1
}

async fn key_spend(policy: &Policy) -> i64 {
    let keys = policy.spend_keys().await.unwrap();
    keys.iter()
        .find(|k| k.key_alias.as_deref() == Some("outage"))
        .map_or(0, |k| k.total_spend_nanos)
}

// A current-thread runtime: the policy's background replay runs only when
// the test awaits, so the steps below are not raced by it.
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

    // Writing again is idempotent: nothing is counted twice.
    policy.flush().await;
    assert_eq!(key_spend(&policy).await, 3 * COST);
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
    let policy = Policy::open(settings(&redis.url(), Some(dir.path()))).await.unwrap();
    assert_eq!(pending(&policy), 4, "the spilled records are queued again");
    policy.flush().await;
    assert_eq!(pending(&policy), 0);
    // Redis restarted empty: it holds the four charges of the outage.
    assert_eq!(key_spend(&policy).await, 4 * COST);
    assert_eq!(spill_lines(dir.path()), 0, "a drained queue empties the file");

    // And a third start has nothing left to write.
    drop(policy);
    let policy = Policy::open(settings(&redis.url(), Some(dir.path()))).await.unwrap();
    assert_eq!(pending(&policy), 0);
    assert_eq!(key_spend(&policy).await, 4 * COST);
}
