//! One test from start to audit: learn the server's set-up, create (or use)
//! the campaign, offer the load, audit, and assemble the result.

use std::time::Duration;

use crate::admin::{AdminClient, CampaignState};
use crate::audit;
use crate::load;
use crate::report::{Machine, RunResult};
use crate::spec::{Endpoint, RunSpec};
use crate::stats::ErrorKind;
use crate::token::Minter;

/// Stock of a campaign that never sells out (the api's largest).
pub const UNLIMITED_STOCK: i64 = 1_000_000_000;

#[derive(Debug, Clone)]
pub struct RunRequest {
    pub spec: RunSpec,
    /// Where admin calls and `/coupons/me` go (the balancer or an instance).
    pub admin_url: String,
    /// An api instance's ops listener, where `/readyz` says which strategy
    /// runs (`None`: not asked; the report says `?`).
    pub ops_url: Option<String>,
    pub admin_token: String,
    pub jwt_secret: String,
    /// Create a campaign with this stock (`None`: never sells out)...
    pub stock: Option<i64>,
    /// ...or use this existing one.
    pub campaign: Option<String>,
    pub audit: bool,
    pub audit_patience: Duration,
    /// Where the audit reads a waiting room's state (`None`: the room is
    /// not audited).
    pub redis_url: Option<String>,
}

pub async fn perform(request: &RunRequest) -> anyhow::Result<RunResult> {
    let spec = &request.spec;
    let admin = AdminClient::new(&request.admin_url, &request.admin_token)?;
    let server = match &request.ops_url {
        Some(url) => admin.server_info(url).await,
        None => Default::default(),
    };
    let campaign = match (&request.campaign, spec.endpoint) {
        (_, Endpoint::Trivial) => CampaignState::none(),
        (Some(id), Endpoint::Issue) => admin.campaign(id).await?,
        (None, Endpoint::Issue) => {
            let stock = request.stock.unwrap_or(UNLIMITED_STOCK);
            admin
                .create_campaign(&format!("load {}", spec.label), stock, spec.waiting_room)
                .await?
        }
    };
    // Tokens outlive the run and its audit.
    let ttl = spec.duration_secs.unwrap_or(3_600) as i64 + spec.warmup_secs as i64 + 3_600;
    let minter = Minter::new(&request.jwt_secret, ttl)?;
    let started_at = chrono::Utc::now();

    let output = load::execute(spec, &campaign.id, minter.clone()).await?;

    let audit = if request.audit && spec.endpoint == Endpoint::Issue {
        let promised = output.ledger.promised(&spec.users, &output.run_id);
        let sold_out_seen = output.summary.outcomes.contains_key("sold_out");
        let failures_seen = output.summary.errors_by_kind.keys().any(|k| {
            matches!(
                k,
                ErrorKind::Server5xx | ErrorKind::Timeout | ErrorKind::Connection
            )
        });
        let mut report = audit::run(
            &admin,
            &minter,
            &campaign.id,
            &promised,
            sold_out_seen,
            failures_seen,
            request.audit_patience,
        )
        .await?;
        if let (Some(_), Some(url)) = (spec.waiting_room, &request.redis_url) {
            let room = audit::room(url, &campaign.id).await?;
            report.failures.extend(room.failures.iter().cloned());
            report.passed &= room.failures.is_empty();
            report.room = Some(room);
        }
        Some(report)
    } else {
        None
    };

    Ok(RunResult {
        version: 1,
        label: spec.label.clone(),
        started_at,
        machine: Machine::here(),
        spec: spec.clone(),
        spread: spec.spread(),
        server,
        campaign_id: campaign.id,
        stock: campaign.stock,
        summary: output.summary,
        hlog: output.collector.hlog().to_vec(),
        samples: output.collector.samples,
        client: output.client,
        stopped_by: output.stopped_by,
        room: output.room,
        processes: None,
        audit,
    })
}
