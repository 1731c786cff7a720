//! `sync`: gate, produce, and wait for the delivery report before replying.
//! The reply is `accepted` only once the broker has the message.

use std::sync::Arc;

use common::ids::{CampaignId, UserId};

use super::{IssueError, Issued, Pipeline};

#[derive(Debug)]
pub struct SyncStrategy {
    pipeline: Arc<Pipeline>,
}

impl SyncStrategy {
    pub fn new(pipeline: Arc<Pipeline>) -> Self {
        Self { pipeline }
    }

    pub async fn issue(&self, campaign: CampaignId, user: UserId) -> Result<Issued, IssueError> {
        let admitted = self.pipeline.admit(&campaign, &user).await?;
        crate::faults::after_gate(&self.pipeline.faults, &user).await;
        self.pipeline
            .produce_and_settle(admitted, campaign, user)
            .await
    }
}
