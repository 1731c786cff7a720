//! The service's own API, used around a run: create the campaign, read its
//! state, page through its coupons, read users' final states, and learn
//! how the server is set up (`/readyz`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::spec::RoomSpec;
use crate::token::Minter;

#[derive(Debug, Clone)]
pub struct AdminClient {
    http: reqwest::Client,
    base: String,
    token: String,
}

/// A campaign as the admin API reports it.
#[derive(Debug, Clone, Deserialize)]
pub struct CampaignState {
    pub id: String,
    pub stock: i64,
    /// Slots taken (the gate's count).
    pub taken: Option<i64>,
    pub persisted: i64,
    pub state: String,
}

impl CampaignState {
    /// No campaign (trivial-endpoint runs).
    pub fn none() -> Self {
        Self {
            id: String::new(),
            stock: 0,
            taken: None,
            persisted: 0,
            state: String::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct CouponPage {
    coupons: Vec<Coupon>,
    next_after: Option<String>,
}

/// One persisted coupon, as the coupon listing gives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Coupon {
    pub user_id: String,
    #[serde(rename = "id")]
    pub coupon_id: String,
}

/// What `/readyz` says about the server.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize, PartialEq)]
pub struct ServerInfo {
    pub strategy: Option<String>,
    /// The lock strategies' `lock.mode` (`naive`, `combining`).
    #[serde(default)]
    pub lock_mode: Option<String>,
    pub per_user_rate_limit: Option<bool>,
}

/// How often a read is retried while the api answers 503.
const READ_RETRIES: usize = 5;

impl AdminClient {
    pub fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()?,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
        })
    }

    async fn json(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let res = request.bearer_auth(&self.token).send().await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{status}: {body}");
        Ok(body)
    }

    /// A read, retried as a client would while the api answers 503 (a
    /// dependency restarting), after its `Retry-After` (at most
    /// [`READ_RETRIES`] times).
    async fn read(&self, request: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let mut request = request;
        for _ in 0..READ_RETRIES {
            let again = request.try_clone();
            let res = request.send().await?;
            match again {
                Some(again) if res.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                    let wait = res
                        .headers()
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                        .unwrap_or(1)
                        .min(5);
                    tokio::time::sleep(Duration::from_secs(wait)).await;
                    request = again;
                }
                _ => return Ok(res),
            }
        }
        Ok(request.send().await?)
    }

    async fn read_json(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let res = self.read(request.bearer_auth(&self.token)).await?;
        let status = res.status();
        let body: Value = res.json().await.unwrap_or(Value::Null);
        anyhow::ensure!(status.is_success(), "{status}: {body}");
        Ok(body)
    }

    pub async fn create_campaign(
        &self,
        name: &str,
        stock: i64,
        room: Option<RoomSpec>,
    ) -> anyhow::Result<CampaignState> {
        let mut request = json!({ "name": name, "stock": stock });
        if let Some(room) = room {
            request["waiting_room"] = json!({
                "admit_per_second": room.admit_per_second,
                "admission_ttl_secs": room.admission_ttl_secs,
            });
        }
        let body = self
            .json(
                self.http
                    .post(format!("{}/api/v1/campaigns", self.base))
                    .json(&request),
            )
            .await?;
        Ok(serde_json::from_value(body)?)
    }

    /// Closes a campaign: nothing more can be taken from it.
    pub async fn close_campaign(&self, id: &str) -> anyhow::Result<()> {
        self.json(
            self.http
                .post(format!("{}/api/v1/campaigns/{id}/close", self.base)),
        )
        .await?;
        Ok(())
    }

    /// Archives a closed campaign (`POST .../archive`: its users and slots
    /// deleted from Redis, for good); idempotent, so retried as a read is
    /// while the api answers 503 (a rebuild or reconcile holding the
    /// campaign's admin lock).
    pub async fn archive_campaign(&self, id: &str) -> anyhow::Result<()> {
        self.read_json(
            self.http
                .post(format!("{}/api/v1/campaigns/{id}/archive", self.base)),
        )
        .await?;
        Ok(())
    }

    pub async fn campaign(&self, id: &str) -> anyhow::Result<CampaignState> {
        let body = self
            .read_json(
                self.http
                    .get(format!("{}/api/v1/campaigns/{id}", self.base)),
            )
            .await?;
        Ok(serde_json::from_value(body)?)
    }

    /// Every persisted coupon (user and coupon id), in the API's order (by user id).
    pub async fn coupons(&self, id: &str) -> anyhow::Result<Vec<Coupon>> {
        let mut users = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut request = self
                .http
                .get(format!("{}/api/v1/campaigns/{id}/coupons", self.base))
                .query(&[("limit", "10000")]);
            if let Some(a) = &after {
                request = request.query(&[("after", a.as_str())]);
            }
            let page: CouponPage = serde_json::from_value(self.read_json(request).await?)?;
            users.extend(page.coupons);
            match page.next_after {
                Some(next) => after = Some(next),
                None => return Ok(users),
            }
        }
    }

    /// A user's state from `/coupons/me` (`none`, `queued`, `pending`,
    /// `issued`, `rejected`), with a token minted for that user.
    pub async fn my_state(&self, minter: &Minter, id: &str, user: &str) -> anyhow::Result<String> {
        let mut auth = String::new();
        minter.bearer(user, &mut auth);
        let body: Value = self
            .read(
                self.http
                    .get(format!("{}/api/v1/campaigns/{id}/coupons/me", self.base))
                    .header("authorization", auth),
            )
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(body["state"].as_str().unwrap_or("?").to_owned())
    }

    /// What `/readyz` on the ops listener at `ops_url` says of the server.
    pub async fn server_info(&self, ops_url: &str) -> ServerInfo {
        let url = format!("{}/readyz", ops_url.trim_end_matches('/'));
        match self.http.get(url).send().await {
            Ok(res) => res.json().await.unwrap_or_default(),
            Err(_) => ServerInfo::default(),
        }
    }
}
