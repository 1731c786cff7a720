//! `/docs`: the API reference (Swagger UI over `/openapi.json`), served from
//! files compiled into the binary (`api/assets/`): nothing is downloaded at
//! build or run time, and the page works where the api has no way out.

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpResponse, web};

/// One embedded file: its path under `/docs`, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

static ASSETS: [Asset; 4] = [
    Asset {
        path: "/docs",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../../assets/docs.html"),
    },
    Asset {
        path: "/docs/docs.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/docs.js"),
    },
    Asset {
        path: "/docs/swagger-ui-bundle.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/swagger-ui/swagger-ui-bundle.js"),
    },
    Asset {
        path: "/docs/swagger-ui.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/swagger-ui/swagger-ui.css"),
    },
];

/// Registers `/docs` and its files.
pub fn configure(cfg: &mut web::ServiceConfig) {
    for asset in &ASSETS {
        cfg.route(
            asset.path,
            web::get().to(move || async move {
                HttpResponse::Ok()
                    .insert_header((CONTENT_TYPE, asset.content_type))
                    // The files change only with the binary.
                    .insert_header((CACHE_CONTROL, "public, max-age=3600"))
                    .body(asset.body)
            }),
        );
    }
}
