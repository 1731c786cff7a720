//! Who is calling: a user (HS256 JWT, or a gateway's `X-User-Id` in
//! `trusted-header` mode) or an admin (a bearer token compared in constant
//! time). Tokens are never logged.

use std::time::Instant;

use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderName};
use actix_web::{FromRequest, HttpRequest, web};
use common::ids::UserId;
use common::settings::{AuthMode, AuthSettings};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use prometheus::Histogram;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
}

pub struct Authenticator {
    mode: AuthMode,
    admin_token: SecretString,
    jwt: Option<(DecodingKey, Validation)>,
    user_header: HeaderName,
    verify_seconds: Histogram,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// `settings` must have passed `Settings::require_api_secrets`.
    pub fn new(settings: &AuthSettings, verify_seconds: Histogram) -> anyhow::Result<Self> {
        let admin_token = settings
            .admin_token
            .clone()
            .ok_or_else(|| anyhow::anyhow!("APP_AUTH__ADMIN_TOKEN is not set"))?;
        let jwt = settings.jwt_secret.as_ref().map(|secret| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.leeway = settings.jwt_leeway_secs;
            validation.set_required_spec_claims(&["exp", "sub"]);
            (
                DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                validation,
            )
        });
        if settings.mode == AuthMode::Jwt && jwt.is_none() {
            anyhow::bail!("APP_AUTH__JWT_SECRET is not set");
        }
        Ok(Self {
            mode: settings.mode,
            admin_token,
            jwt,
            user_header: HeaderName::try_from(settings.user_header.as_str())?,
            verify_seconds,
        })
    }

    /// The calling user, or 401.
    pub fn user(&self, req: &HttpRequest) -> Result<UserId, ApiError> {
        match self.mode {
            AuthMode::Jwt => {
                let token = bearer(req)
                    .ok_or_else(|| ApiError::Unauthorized("missing bearer token".into()))?;
                self.verify_jwt(token)
            }
            AuthMode::TrustedHeader => {
                let value = req.headers().get(&self.user_header).ok_or_else(|| {
                    ApiError::Unauthorized(format!("missing {}", self.user_header))
                })?;
                let value = value.to_str().map_err(|_| {
                    ApiError::Unauthorized(format!("{} is not a valid user id", self.user_header))
                })?;
                UserId::parse(value).map_err(|e| ApiError::Unauthorized(e.to_string()))
            }
        }
    }

    fn verify_jwt(&self, token: &str) -> Result<UserId, ApiError> {
        let Some((key, validation)) = &self.jwt else {
            return Err(ApiError::Unauthorized(
                "user tokens are not accepted here".into(),
            ));
        };
        let started = Instant::now();
        let verified = decode::<Claims>(token, key, validation);
        self.verify_seconds.observe(started.elapsed().as_secs_f64());
        let claims = verified
            .map_err(|e| ApiError::Unauthorized(format!("invalid token: {e}")))?
            .claims;
        UserId::parse(&claims.sub)
            .map_err(|e| ApiError::Unauthorized(format!("token subject: {e}")))
    }

    /// Ok for the admin token; 403 for a valid user credential; else 401.
    pub fn admin(&self, req: &HttpRequest) -> Result<(), ApiError> {
        if let Some(token) = bearer(req)
            && bool::from(
                token
                    .as_bytes()
                    .ct_eq(self.admin_token.expose_secret().as_bytes()),
            )
        {
            return Ok(());
        }
        if self.user(req).is_ok() {
            return Err(ApiError::Forbidden(
                "admin routes need the admin token".into(),
            ));
        }
        Err(ApiError::Unauthorized(
            "missing or wrong admin token".into(),
        ))
    }
}

fn bearer(req: &HttpRequest) -> Option<&str> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

fn authenticator(req: &HttpRequest) -> Result<&Authenticator, ApiError> {
    req.app_data::<web::Data<Authenticator>>()
        .map(|d| d.get_ref())
        .ok_or_else(|| ApiError::Internal(anyhow::anyhow!("authenticator not configured")))
}

/// Extractor: the verified user of the request.
#[derive(Debug)]
pub struct AuthenticatedUser(pub UserId);

impl FromRequest for AuthenticatedUser {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(authenticator(req).and_then(|a| a.user(req)).map(Self))
    }
}

/// Extractor: the request carries the admin token.
#[derive(Debug)]
pub struct Admin;

impl FromRequest for Admin {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        std::future::ready(authenticator(req).and_then(|a| a.admin(req)).map(|()| Self))
    }
}
