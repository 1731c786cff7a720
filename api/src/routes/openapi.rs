//! The OpenAPI document served at `/openapi.json`, generated from the
//! handlers' own annotations so that it cannot drift from what they accept
//! and answer.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::campaigns::{CampaignList, CouponPage};
use super::issue::{CouponState, IssueOutcome, IssueReply, MyCoupon};
use super::room::{PlaceReply, PlaceState};
use super::{campaigns, issue, ops, room};
use crate::campaigns::{
    CampaignRequest, CampaignState, CampaignView, CouponView, WaitingRoomRequest, WaitingRoomView,
};
use crate::error::ErrorBody;

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
        campaigns::archive,
        campaigns::coupons,
        issue::issue,
        issue::my_coupon,
        room::join,
        room::my_place,
        ops::healthz,
        serve,
    ),
    components(schemas(
        CampaignRequest,
        CampaignView,
        CampaignState,
        CampaignList,
        CouponView,
        CouponPage,
        IssueReply,
        IssueOutcome,
        MyCoupon,
        CouponState,
        PlaceReply,
        PlaceState,
        WaitingRoomRequest,
        WaitingRoomView,
        ErrorBody
    )),
    modifiers(&BearerSchemes, &ResponseHeaders),
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

/// The headers every reply may carry, declared on each response instead of
/// on each handler: `X-Request-Id` on all; `Retry-After` on 429 and 503 (and
/// on 409 and 202 where the handler says to come back later);
/// `Idempotent-Replayed` on the replies of operations that take an
/// `Idempotency-Key`.
#[derive(Debug)]
struct ResponseHeaders;

impl Modify for ResponseHeaders {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::header::HeaderBuilder;
        use utoipa::openapi::{Object, RefOr, Type};
        let header = |kind: Type, description: &str| {
            HeaderBuilder::new()
                .schema(Object::with_type(kind))
                .description(Some(description))
                .build()
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                let idempotent = operation
                    .parameters
                    .iter()
                    .flatten()
                    .any(|p| p.name == "Idempotency-Key");
                for (status, response) in &mut operation.responses.responses {
                    let RefOr::T(response) = response else {
                        continue;
                    };
                    response.headers.insert(
                        "X-Request-Id".into(),
                        header(
                            Type::String,
                            "The request's id: the caller's X-Request-Id when usable (1–128 visible ASCII), else a new UUID v7; every log line of the request carries it",
                        ),
                    );
                    let come_back = matches!(status.as_str(), "429" | "503")
                        || (response.description.contains("Retry-After"));
                    if come_back {
                        response.headers.insert(
                            "Retry-After".into(),
                            header(Type::Integer, "Seconds to wait before trying again"),
                        );
                    }
                    if idempotent {
                        response.headers.insert(
                            "Idempotent-Replayed".into(),
                            header(
                                Type::Boolean,
                                "`true` when this is the stored reply of an earlier request with the same Idempotency-Key",
                            ),
                        );
                    }
                }
            }
        }
    }
}

/// The OpenAPI document of this api.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "This document")))]
pub async fn serve() -> actix_web::HttpResponse {
    actix_web::HttpResponse::Ok().json(ApiDoc::openapi())
}
