//! The Redis store against a real `redis-server`: a request's holds
//! (in-flight slots, budget reservations) last as long as the request, not
//! only `hold_ttl`; spend listings come from an index, not a scan.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, reason = "tests")]

use std::time::Duration;

use switchyard_policy::{Demand, Denied, FailureMode, KeyRecord, Policy, PolicySettings, RedisSettings};
use switchyard_testkit::RedisServer;

const KEY: &str = "sk-long-request-key-0123456789";
const HOLD_TTL: Duration = Duration::from_secs(1);

fn settings(url: &str) -> PolicySettings {
    let mut record = KeyRecord::new(KEY, 0, true);
    record.limits.max_parallel_requests = Some(1);
    record.limits.max_budget = Some(1.0);
    PolicySettings {
        redis: Some(RedisSettings {
            url: url.into(),
            prefix: "holds:".into(),
            failure_mode: FailureMode::FailClosed,
            timeout: Duration::from_secs(2),
            hold_ttl: HOLD_TTL,
            settled_ttl: Duration::from_secs(3600),
            log_max_len: 1_000,
            max_queued_spend: 1_000,
        }),
        keys: vec![(KEY.into(), record)],
        ..PolicySettings::default()
    }
}

/// A request reserving 60% of the key's $1 budget.
fn demand() -> Demand {
    Demand {
        model: "m".into(),
        requested_as: None,
        access_groups: Vec::new(),
        end_user: None,
        unpriced: false,
        any_model: false,
        estimated_tokens: 10,
        max_cost: 600_000_000,
        request_id: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_running_past_hold_ttl_keeps_its_slot_and_reservation() {
    let redis = RedisServer::start();
    let policy = Policy::open(settings(&redis.url())).await.unwrap();
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    let running = policy.admit(&principal, &demand()).await.unwrap();

    // Three times `hold_ttl` later the first request still runs: its slot
    // is still taken, so a second one is refused.
    tokio::time::sleep(HOLD_TTL * 3).await;
    let second = policy.admit(&principal, &demand()).await;
    assert!(
        matches!(second, Err(Denied::TooManyParallel { .. })),
        "the running request lost its slot: {second:?}"
    );

    // Once it ends, the slot is free at once.
    drop(running);
    let mut freed = false;
    for _ in 0..100 {
        match policy.admit(&principal, &demand()).await {
            Ok(_) => {
                freed = true;
                break;
            }
            Err(Denied::TooManyParallel { .. }) => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(other) => panic!("{other:?}"),
        }
    }
    assert!(freed, "the slot is freed once the request ends");
    // The last admission's ticket was dropped: its release is on its way;
    // `flush` waits for it.
    policy.flush().await;

    // The budget reservation is kept the same way: 60% of the budget is
    // still reserved three `hold_ttl`s on, so another 60% is refused.
    let mut settings = settings(&redis.url());
    settings.keys[0].1.limits.max_parallel_requests = None;
    let unlimited = Policy::open(settings).await.unwrap();
    let principal = unlimited.authenticate(Some(KEY)).await.unwrap();
    let _running = unlimited.admit(&principal, &demand()).await.unwrap();
    tokio::time::sleep(HOLD_TTL * 3).await;
    let over = unlimited.admit(&principal, &demand()).await;
    assert!(
        matches!(over, Err(Denied::BudgetExceeded { .. })),
        "the running request lost its reservation: {over:?}"
    );
    // The keys holding reservations expire with their last hold (renewed
    // while it runs): a subject never admitted again leaves nothing.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    for pattern in ["holds:resv:*", "holds:resva:*"] {
        let names: Vec<String> = redis::cmd("KEYS").arg(pattern).query_async(&mut conn).await.unwrap();
        assert!(!names.is_empty(), "{pattern}");
        for name in names {
            let ttl: i64 = redis::cmd("PTTL").arg(&name).query_async(&mut conn).await.unwrap();
            assert!(ttl > 0 && ttl <= HOLD_TTL.as_millis() as i64, "{name}: {ttl}");
        }
    }
}

/// Spend listings read the index of spend hashes the settlement keeps; a
/// database from before the index is scanned once to fill it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_listings_come_from_the_index_and_older_data_is_indexed_once() {
    use switchyard_policy::{Charge, TokenUsage};
    let redis = RedisServer::start();
    let mut settings = settings(&redis.url());
    settings.keys[0].1.limits.max_parallel_requests = None;
    let policy = Policy::open(settings).await.unwrap();
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    // A name holding `spend:end_user:` is still listed: only end users'
    // own hashes stay out of the index.
    for model in ["m", "n", "spend:end_user:x"] {
        let demand = Demand {
            model: model.into(),
            max_cost: 1_000,
            ..demand()
        };
        let ticket = policy.admit(&principal, &demand).await.unwrap();
        let charge = Charge {
            deployment: format!("{model}/0"),
            usage: TokenUsage::default(),
            cost: 10,
            cache_hit: false,
        };
        policy.settle(ticket, charge).await.unwrap();
    }
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("holds:spend-subjects")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(members.contains(&"holds:spend:model:m".to_owned()), "{members:?}");
    assert!(
        members.contains(&"holds:spend:model:spend:end_user:x".to_owned()),
        "{members:?}"
    );
    // Settled ids are kept for `settled_ttl` (an hour here, 48 hours by default).
    let settled: Vec<String> = redis::cmd("KEYS")
        .arg("holds:settled:*")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(settled.len(), 3, "{settled:?}");
    let ttl: i64 = redis::cmd("TTL").arg(&settled[0]).query_async(&mut conn).await.unwrap();
    assert!((3500..=3600).contains(&ttl), "{ttl}");

    // As if written before the index: only the hashes are there, an end
    // user's among them.
    let _: () = redis::cmd("DEL")
        .arg("holds:spend-subjects")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("HSET")
        .arg("holds:spend:end_user:ana")
        .arg("total")
        .arg(5)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut models: Vec<String> = policy
        .spend_by_prefix("model:")
        .await
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    models.sort();
    assert_eq!(models, ["m", "n", "spend:end_user:x"]);
    let complete: bool = redis::cmd("EXISTS")
        .arg("holds:spend-subjects-complete")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(complete);
    // End users' hashes are not indexed, as the settlement keeps them out.
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg("holds:spend-subjects")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!members.iter().any(|m| m.contains("spend:end_user:ana")), "{members:?}");
    // From then on the index answers: a hash it does not name is not listed.
    let _: () = redis::cmd("SREM")
        .arg("holds:spend-subjects")
        .arg("holds:spend:model:n")
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut listed: Vec<String> = policy
        .spend_by_prefix("model:")
        .await
        .unwrap()
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    listed.sort();
    assert_eq!(listed, ["m", "spend:end_user:x"]);
}

/// A record Redis holds that this version cannot read (a newer version's,
/// or one edited by hand) is not taken for an absent one: a key naming that
/// user is refused as with the store down (fail-closed here), rather than
/// served without the user's block and limits, and the admin API says it
/// cannot read it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_record_is_not_taken_for_a_missing_one() {
    let redis = RedisServer::start();
    let mut settings = settings(&redis.url());
    settings.keys[0].1.user_id = Some("u1".into());
    let policy = Policy::open(settings).await.unwrap();
    // No record for u1 yet: a free-form label, and the key is served.
    policy.authenticate(Some(KEY)).await.unwrap();

    let client = redis::Client::open(redis.url()).unwrap();
    let mut con = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("HSET")
        .arg("holds:users")
        .arg("u1")
        .arg(r#"{"user_id": "u1", "blocked": "maybe"#)
        .query_async(&mut con)
        .await
        .unwrap();
    let refused = policy.authenticate(Some(KEY)).await;
    assert!(matches!(refused, Err(Denied::Unavailable)), "{refused:?}");
    let read = policy.user("u1").await.map(|_| ()).unwrap_err().to_string();
    assert!(read.contains("`users`") && !read.contains("maybe"), "{read}");
    // A listing leaves an unreadable record out rather than failing whole;
    // the key count still counts it.
    let _: () = redis::cmd("HSET")
        .arg("holds:keys")
        .arg("not-a-key-hash")
        .arg("{")
        .query_async(&mut con)
        .await
        .unwrap();
    let listed = policy.list_keys().await.unwrap();
    assert_eq!(listed.len(), 1, "the configured key only");
    assert_eq!(policy.key_count().await.unwrap(), 2);
    // A check that must see every key (an alias free, a team with no keys
    // left) refuses while one cannot be read.
    let all = policy.all_keys().await.map(|k| k.len()).unwrap_err().to_string();
    assert!(all.contains("cannot be read"), "{all}");
}

/// Keys made at once with one alias, through two replicas: one gets it,
/// the others are told.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_alias_names_one_key_however_many_ask_at_once() {
    let redis = RedisServer::start();
    let policy = Policy::open(settings(&redis.url())).await.unwrap();
    let replica = Policy::open(settings(&redis.url())).await.unwrap();
    let body = serde_json::json!({"key_alias": "shared"}).as_object().unwrap().clone();
    let tries: Vec<_> = (0..12)
        .map(|i| {
            let policy = if i % 2 == 0 { policy.clone() } else { replica.clone() };
            let body = body.clone();
            tokio::spawn(async move { policy.generate_key(&body).await })
        })
        .collect();
    let mut made = 0;
    for attempt in tries {
        match attempt.await.unwrap() {
            Ok(_) => made += 1,
            Err(e) => assert!(e.to_string().contains("already exists"), "{e}"),
        }
    }
    assert_eq!(made, 1);
    let holders = policy
        .list_keys()
        .await
        .unwrap()
        .into_iter()
        .filter(|k| k.key_alias.as_deref() == Some("shared"))
        .count();
    assert_eq!(holders, 1);
}

/// A budget alert is claimed in Redis for a while only until it is
/// delivered, so that a replica stopped first leaves it to another; once
/// delivered, for the rest of its period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_budget_alert_is_claimed_for_its_period_once_delivered() {
    use switchyard_policy::AlertKind;
    let redis = RedisServer::start();
    let mut settings = settings(&redis.url());
    settings.keys[0].1.limits.max_parallel_requests = None;
    let policy = Policy::open(settings).await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(4);
    policy.send_alerts_to(tx, vec![AlertKind::BudgetExhausted], Duration::from_secs(60));
    let principal = policy.authenticate(Some(KEY)).await.unwrap();
    // 95% of the $1 budget spent: the next request's 60% is refused.
    let ticket = policy.admit(&principal, &demand()).await.unwrap();
    let charge = switchyard_policy::Charge {
        deployment: "m/0".into(),
        usage: switchyard_policy::TokenUsage::default(),
        cost: 950_000_000,
        cache_hit: false,
    };
    policy.settle(ticket, charge).await.unwrap();
    let refused = policy.admit(&principal, &demand()).await;
    assert!(matches!(refused, Err(Denied::BudgetExceeded { .. })), "{refused:?}");
    let alert = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let name = format!("holds:alerted:{}", alert.claim);
    let ttl = |conn: &mut redis::aio::MultiplexedConnection| {
        let mut conn = conn.clone();
        let name = name.clone();
        async move {
            let ttl: i64 = redis::cmd("PTTL").arg(&name).query_async(&mut conn).await.unwrap();
            ttl
        }
    };
    let leased = ttl(&mut conn).await;
    assert!(leased > 0 && leased <= 10 * 60 * 1000, "{leased}");
    // Delivered after its lease ran out (a long queue): claimed again,
    // for its period.
    let _: () = redis::cmd("DEL").arg(&name).query_async(&mut conn).await.unwrap();
    policy.confirm_policy_alert(&alert).await;
    let confirmed = ttl(&mut conn).await;
    assert!(confirmed > 24 * 3600 * 1000, "{confirmed}");
}
