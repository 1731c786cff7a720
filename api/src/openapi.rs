//! The OpenAPI document served at `/openapi.json`, generated from the
//! handlers' own annotations so that it cannot drift from what they accept
//! and answer.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::campaigns::{
    CampaignRequest, CampaignState, CampaignView, CouponView, WaitingRoomRequest, WaitingRoomView,
};
use crate::error::ErrorBody;
use crate::routes::campaigns::{CampaignList, CouponPage};
use crate::routes::issue::{IssueReply, MyCoupon};
use crate::routes::queue::QueueReply;
use crate::routes::{campaigns, issue, ops, queue};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "coupon-engine",
        description = "First-come coupon issuance: exactly the stock, never two to one user, nothing promised lost."
    ),
    paths(
        campaigns::create,
        campaigns::list,
        campaigns::get,
        campaigns::close,
        campaigns::coupons,
        issue::issue,
        issue::my_coupon,
        queue::join,
        queue::my_place,
        ops::healthz,
        ops::readyz,
        ops::metrics,
        ops::openapi,
    ),
    components(schemas(
        CampaignRequest,
        CampaignView,
        CampaignState,
        CampaignList,
        CouponView,
        CouponPage,
        IssueReply,
        MyCoupon,
        QueueReply,
        WaitingRoomRequest,
        WaitingRoomView,
        ErrorBody
    )),
    modifiers(&BearerSchemes),
    tags(
        (name = "admin", description = "Campaigns; the admin token"),
        (name = "user", description = "Issuing; a user JWT (`sub` = user id)"),
        (name = "operations", description = "Health, readiness, metrics"),
    )
)]
#[derive(Debug)]
pub struct ApiDoc;

#[derive(Debug)]
struct BearerSchemes;

impl Modify for BearerSchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "admin",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        components.add_security_scheme(
            "user",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}
