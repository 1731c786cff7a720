//! Bursts of concurrent requests through real api instances, Redis, the
//! broker, the worker and PostgreSQL: exactly the stock is issued, never
//! twice to one user, and every accepted user gets a row.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use crate::helpers::*;
use futures::future::join_all;
use rand::seq::SliceRandom;
use reqwest::StatusCode;

const EXPECTED_REFUSALS: [&str; 3] = ["duplicate", "sold_out", "rate_limited"];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_2000_requests_from_500_users_issues_exactly_the_stock() {
    let _alone = BURSTS.lock().await;
    let settings = test_settings().await;
    let apis = [spawn_api(&settings).await, spawn_api(&settings).await];
    let worker = spawn_worker(&settings).await;
    let campaign = apis[0].open_campaign(100).await;

    let mut requests: Vec<String> = (0..500)
        .flat_map(|u| std::iter::repeat_n(format!("user-{u}"), 4))
        .collect();
    requests.shuffle(&mut rand::rng());
    let replies = join_all(requests.iter().enumerate().map(|(i, user)| {
        let api = &apis[i % apis.len()];
        let campaign = &campaign;
        async move { (user.clone(), api.issue(campaign, user).await) }
    }))
    .await;

    let mut outcomes: HashMap<String, usize> = HashMap::new();
    let mut accepted = BTreeSet::new();
    for (user, (status, body)) in &replies {
        let outcome = body["outcome"].as_str().unwrap_or("?").to_owned();
        if outcome == "accepted" {
            assert_eq!(*status, StatusCode::ACCEPTED);
            assert!(accepted.insert(user.clone()), "{user} accepted twice");
        } else {
            assert!(
                EXPECTED_REFUSALS.contains(&outcome.as_str()),
                "unexpected reply {status} {body}"
            );
        }
        *outcomes.entry(outcome).or_default() += 1;
    }
    assert_eq!(accepted.len(), 100, "outcomes: {outcomes:?}");

    let db = db().await;
    wait_for_rows(&db, &campaign, 100, Duration::from_secs(30)).await;
    let mut users = row_users(&db, &campaign).await;
    users.sort();
    let distinct: BTreeSet<String> = users.iter().cloned().collect();
    assert_eq!(distinct.len(), 100, "a user has two rows");
    assert_eq!(distinct, accepted, "rows and accepted users differ");
    let (members, issued) = gate_state(&campaign).await;
    assert_eq!(issued, Some(100));
    assert_eq!(members.into_iter().collect::<BTreeSet<_>>(), accepted);
    assert_eq!(persisted_column(&db, &campaign).await, 100);

    let (_, view) = apis[1].campaign(&campaign).await;
    assert_eq!(view["taken"], 100);
    assert_eq!(view["persisted"], 100);
    assert_eq!(view["state"], "sold_out");
    // The takes that arrived while a gate call was out went together
    // (`gate.batch_size`, its default): fewer calls than takes.
    for api in &apis {
        let scrape = api.scrape().await;
        let calls = scrape.sum("gate_batch_takes_count", &[]);
        let takes = scrape.sum("gate_batch_takes_sum", &[]);
        assert!(
            takes > 0.0 && calls < takes,
            "{calls} calls for {takes} takes"
        );
    }

    worker.stop().await;
    for api in apis {
        api.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_user_firing_200_concurrent_requests_gets_one_coupon() {
    let _alone = BURSTS.lock().await;
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let campaign = api.open_campaign(50).await;

    let replies = join_all((0..200).map(|_| api.issue(&campaign, "greedy"))).await;
    let accepted = replies
        .iter()
        .filter(|(_, body)| body["outcome"] == "accepted")
        .count();
    assert_eq!(accepted, 1);
    for (status, body) in &replies {
        let outcome = body["outcome"].as_str().unwrap_or("?");
        assert!(
            outcome == "accepted" || outcome == "duplicate" || outcome == "rate_limited",
            "{status} {body}"
        );
    }
    let db = db().await;
    wait_for_rows(&db, &campaign, 1, Duration::from_secs(20)).await;
    let (_, me) = api.my_coupon(&campaign, "greedy").await;
    assert_eq!(me["state"], "issued");
    // Nothing more arrives later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&db, &campaign).await, 1);

    worker.stop().await;
    api.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stock_zero_sells_out_without_marking_anyone() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(0).await;

    let replies = join_all((0..20).map(|u| {
        let user = format!("u{u}");
        let (api, campaign) = (&api, &campaign);
        async move { api.issue(campaign, &user).await }
    }))
    .await;
    for (status, body) in &replies {
        assert_eq!(*status, StatusCode::GONE, "{body}");
        assert_eq!(body["outcome"], "sold_out");
    }
    assert_eq!(gate_state(&campaign).await, (vec![], Some(0)));
    let (_, me) = api.my_coupon(&campaign, "u1").await;
    assert_eq!(me["state"], "none");
    assert_eq!(
        topic_messages(&settings.kafka.brokers, &settings.kafka.topic).await,
        0
    );
    api.stop().await;
}

/// Demand of stock − 1, stock and stock + 1 distinct users (and stock 1):
/// rows == min(stock, users), and nobody beyond the stock is marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rows_equal_the_smaller_of_stock_and_demand() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let worker = spawn_worker(&settings).await;
    let db = db().await;

    for (stock, users) in [(1, 1), (1, 3), (10, 9), (10, 10), (10, 11)] {
        let campaign = api.open_campaign(stock).await;
        let replies = join_all((0..users).map(|u| {
            let user = format!("user-{u}");
            let (api, campaign) = (&api, &campaign);
            async move { api.issue(campaign, &user).await }
        }))
        .await;
        let accepted = replies
            .iter()
            .filter(|(_, b)| b["outcome"] == "accepted")
            .count() as i64;
        let sold_out = replies
            .iter()
            .filter(|(_, b)| b["outcome"] == "sold_out")
            .count() as i64;
        let expected = stock.min(users);
        assert_eq!(accepted, expected, "stock {stock}, users {users}");
        assert_eq!(sold_out, users - expected, "stock {stock}, users {users}");
        wait_for_rows(&db, &campaign, expected as u64, Duration::from_secs(20)).await;
        let (members, issued) = gate_state(&campaign).await;
        assert_eq!(issued, Some(expected));
        assert_eq!(members.len() as i64, expected);
    }

    worker.stop().await;
    api.stop().await;
}

/// `/coupons/me` between the take and the row: `pending` with the
/// coupon id the slot names (the reply's), then `issued` with the
/// same id once the worker has written the row.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn my_coupon_is_pending_with_its_id_until_the_row_says_issued() {
    let settings = test_settings().await;
    let api = spawn_api(&settings).await;
    let campaign = api.open_campaign(5).await;
    let (status, reply) = api.issue(&campaign, "early").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{reply}");
    // No worker yet: no row.
    let (_, me) = api.my_coupon(&campaign, "early").await;
    assert_eq!(me["state"], "pending", "{me}");
    assert_eq!(me["coupon_id"], reply["coupon_id"], "{me} vs {reply}");

    let worker = spawn_worker(&settings).await;
    wait_for_rows(&db().await, &campaign, 1, Duration::from_secs(30)).await;
    let (_, me) = api.my_coupon(&campaign, "early").await;
    assert_eq!(me["state"], "issued", "{me}");
    assert_eq!(me["coupon_id"], reply["coupon_id"], "{me} vs {reply}");
    worker.stop().await;
    api.stop().await;
}
