//! `/campaigns/{id}/room`: the waiting room as a shopper sees it. A page of
//! plain HTML, CSS and JavaScript compiled into the binary (`api/static/room/`)
//! that joins the room for the user of the token it is given, shows the
//! place and the wait, and issues once admitted, through the user endpoints
//! (docs/CONTRACT.md, "The waiting-room page").
//!
//! The page is the same for every campaign (its script reads the id from the
//! address), so serving it costs no Redis or database call. Its token comes
//! in the address's fragment (`#token=…`, never sent to a server), or, when
//! a shop frames the page, by `postMessage` from one of
//! `http.room_page_origins`, the same list as its `frame-ancestors`.

use std::sync::Arc;

use actix_web::http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, HeaderName, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use actix_web::{HttpRequest, HttpResponse, HttpResponseBuilder, web};
use common::settings::HttpSettings;

use super::{campaign_id, method_not_allowed};
use crate::error::ApiError;

const HTML: &str = include_str!("../../static/room/index.html");
const SCRIPT: &str = include_str!("../../static/room/room.js");
const STYLE: &str = include_str!("../../static/room/room.css");
/// Where the page's origins go in `HTML`: its script reads them there
/// (an inline script would need a hash in the policy).
const ORIGINS_SLOT: &str = "{{ROOM_PAGE_ORIGINS}}";

/// The page as this instance serves it: its HTML with the embedding
/// origins filled in, and its `Content-Security-Policy`.
#[derive(Debug, Clone)]
pub struct RoomPage(Arc<Rendered>);

#[derive(Debug)]
struct Rendered {
    html: String,
    policy: String,
    framed: bool,
}

impl RoomPage {
    /// Refuses an origin that is not `http(s)://host[:port]`.
    pub fn new(http: &HttpSettings) -> anyhow::Result<Self> {
        let origins = parse_origins(&http.room_page_origins)
            .map_err(|e| anyhow::anyhow!("APP_HTTP__ROOM_PAGE_ORIGINS: {e}"))?;
        let ancestors = if origins.is_empty() {
            "'none'".to_owned()
        } else {
            origins.join(" ")
        };
        Ok(Self(Arc::new(Rendered {
            html: HTML.replace(ORIGINS_SLOT, &origins.join(" ")),
            policy: format!(
                "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; \
                 img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors {ancestors}"
            ),
            framed: !origins.is_empty(),
        })))
    }

    /// Registers the page and its two files.
    pub fn configure(&self, cfg: &mut web::ServiceConfig) {
        let page = self.clone();
        cfg.service(
            web::resource("/campaigns/{id}/room")
                .route(web::get().to(move |req: HttpRequest| {
                    let page = page.clone();
                    async move { page.serve(&req) }
                }))
                .default_service(web::to(method_not_allowed)),
        );
        for (path, content_type, body) in [
            (
                "/static/room/room.js",
                "text/javascript; charset=utf-8",
                SCRIPT,
            ),
            ("/static/room/room.css", "text/css; charset=utf-8", STYLE),
        ] {
            cfg.route(
                path,
                web::get().to(move || async move {
                    let mut reply = HttpResponse::Ok();
                    common_headers(&mut reply);
                    reply
                        .insert_header((CONTENT_TYPE, content_type))
                        // Loaded by this page only, never by another site's.
                        .insert_header((
                            HeaderName::from_static("cross-origin-resource-policy"),
                            "same-origin",
                        ))
                        .body(body)
                }),
            );
        }
    }

    fn serve(&self, req: &HttpRequest) -> Result<HttpResponse, ApiError> {
        campaign_id(req)?;
        let mut reply = HttpResponse::Ok();
        common_headers(&mut reply);
        reply
            .insert_header((CONTENT_TYPE, "text/html; charset=utf-8"))
            .insert_header((CONTENT_SECURITY_POLICY, self.0.policy.as_str()));
        if !self.0.framed {
            // For browsers older than `frame-ancestors`.
            reply.insert_header((X_FRAME_OPTIONS, "DENY"));
        }
        Ok(reply.body(self.0.html.clone()))
    }
}

/// The page and its files: never sniffed, never a referrer (the address of
/// a page opened from a signed link may still hold its token), revalidated
/// on each load so that a new binary's page never runs an old script.
fn common_headers(reply: &mut HttpResponseBuilder) {
    reply
        .insert_header((X_CONTENT_TYPE_OPTIONS, "nosniff"))
        .insert_header((REFERRER_POLICY, "no-referrer"))
        .insert_header((CACHE_CONTROL, "no-cache"));
}

/// `http.room_page_origins` as origins a browser writes (`event.origin`):
/// lowercase, without the scheme's default port.
fn parse_origins(list: &str) -> Result<Vec<String>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            let origin = o.to_ascii_lowercase();
            let (scheme, authority) = origin
                .split_once("://")
                .ok_or_else(|| format!("{o:?} is not an origin (scheme://host[:port])"))?;
            let default_port = match scheme {
                "https" => ":443",
                "http" => ":80",
                _ => {
                    return Err(format!(
                        "{o:?}: only http and https origins can frame the page"
                    ));
                }
            };
            let host_chars = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
            if authority.is_empty() || !authority.chars().all(host_chars) {
                return Err(format!(
                    "{o:?} is not an origin (scheme://host[:port], no path, no wildcard)"
                ));
            }
            let authority = authority.strip_suffix(default_port).unwrap_or(authority);
            Ok(format!("{scheme}://{authority}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(origins: &str) -> RoomPage {
        RoomPage::new(&HttpSettings {
            room_page_origins: origins.into(),
            ..HttpSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn origins_are_written_as_browsers_write_them() {
        assert_eq!(parse_origins(" ,").unwrap(), Vec::<String>::new());
        assert_eq!(
            parse_origins("HTTPS://Shop.Example:443, http://127.0.0.1:8080,http://a.test:80")
                .unwrap(),
            [
                "https://shop.example",
                "http://127.0.0.1:8080",
                "http://a.test"
            ]
        );
        for bad in [
            "shop.example",
            "ftp://shop.example",
            "https://",
            "https://shop.example/",
            "https://*.shop.example",
            "https://shop.example 'unsafe-inline'",
            "https://shop.example;script-src",
            "https://u@shop.example",
        ] {
            assert!(parse_origins(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn without_origins_the_page_cannot_be_framed() {
        let page = page("");
        assert!(page.0.policy.ends_with("frame-ancestors 'none'"));
        assert!(page.0.policy.contains("script-src 'self';"));
        assert!(!page.0.policy.contains("unsafe"));
        assert!(!page.0.framed);
        assert!(
            page.0
                .html
                .contains(r#"<meta name="room-page-origins" content="">"#)
        );
    }

    #[test]
    fn origins_go_into_the_policy_and_the_page() {
        let page = page("https://shop.example,https://m.shop.example");
        assert!(
            page.0
                .policy
                .ends_with("frame-ancestors https://shop.example https://m.shop.example")
        );
        assert!(page.0.framed);
        assert!(page.0.html.contains(
            r#"<meta name="room-page-origins" content="https://shop.example https://m.shop.example">"#
        ));
        assert!(!page.0.html.contains(ORIGINS_SLOT));
    }

    #[test]
    fn the_page_has_no_inline_script_or_style() {
        assert!(!HTML.contains("<script>"));
        let handler = HTML.split(" on").skip(1).any(|rest| {
            let name = rest.trim_start_matches(|c: char| c.is_ascii_lowercase());
            name.len() < rest.len() && name.starts_with('=')
        });
        assert!(!handler, "an inline event handler");
        assert!(!HTML.contains("style="));
        assert!(HTML.contains(r#"<script src="/static/room/room.js" defer></script>"#));
    }
}
