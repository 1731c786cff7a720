//! Who is calling: a user (a JWT — HS256 with a shared secret, or RS256 with
//! a public key, `iss`/`aud` checked when configured — or a gateway's
//! `X-User-Id` in `trusted-header` mode) or an admin (a bearer token compared
//! in constant time). Only the configured algorithm is accepted, so neither
//! `alg: none` nor an HS256 token signed with the RS256 public key passes.
//! Tokens are never logged.

use std::time::Instant;

use actix_web::dev::Payload;
use actix_web::http::header::{self, HeaderName};
use actix_web::{FromRequest, HttpRequest, web};
use anyhow::Context;
use common::ids::UserId;
use common::settings::{AuthMode, AuthSettings, JwtAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode};
use prometheus::Histogram;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
    iat: Option<i64>,
}

pub struct Authenticator {
    mode: AuthMode,
    admin_token: SecretString,
    jwt: Option<(DecodingKey, Validation)>,
    /// Seconds of clock skew tolerated on `iat`.
    leeway: i64,
    /// The longest a token may still be valid for, seconds.
    max_lifetime: i64,
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
        let key = match settings.jwt_algorithm {
            JwtAlgorithm::HS256 => settings.jwt_secret.as_ref().map(|secret| {
                (
                    Algorithm::HS256,
                    DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                )
            }),
            JwtAlgorithm::RS256 => {
                let pem = match (&settings.jwt_public_key, &settings.jwt_public_key_file) {
                    (Some(pem), _) => Some(pem.clone()),
                    (None, Some(path)) => Some(
                        std::fs::read_to_string(path)
                            .with_context(|| format!("reading the JWT public key {path}"))?,
                    ),
                    (None, None) => None,
                };
                pem.map(|pem| -> anyhow::Result<_> {
                    Ok((
                        Algorithm::RS256,
                        DecodingKey::from_rsa_pem(pem.as_bytes())
                            .context("parsing the RS256 public key")?,
                    ))
                })
                .transpose()?
            }
        };
        let jwt = key.map(|(algorithm, key)| {
            let mut validation = Validation::new(algorithm);
            validation.leeway = settings.jwt_leeway_secs;
            // A token valid from tomorrow is not valid today.
            validation.validate_nbf = true;
            let mut required = vec!["exp", "sub"];
            if let Some(issuer) = &settings.jwt_issuer {
                validation.set_issuer(&[issuer]);
                required.push("iss");
            }
            match &settings.jwt_audience {
                Some(audience) => {
                    validation.set_audience(&[audience]);
                    required.push("aud");
                }
                None => validation.validate_aud = false,
            }
            validation.set_required_spec_claims(&required);
            (key, validation)
        });
        if settings.mode == AuthMode::Jwt && jwt.is_none() {
            anyhow::bail!("no JWT key configured for {:?}", settings.jwt_algorithm);
        }
        Ok(Self {
            mode: settings.mode,
            admin_token,
            jwt,
            leeway: i64::try_from(settings.jwt_leeway_secs).unwrap_or(i64::MAX),
            max_lifetime: i64::try_from(settings.jwt_max_lifetime_secs).unwrap_or(i64::MAX),
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
        // The reply names the kind of refusal, never the library's words;
        // the detail goes to the log, with the request's id.
        let claims = verified
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                tracing::info!(error = %e, "token refused");
                ApiError::Unauthorized(
                    match e.kind() {
                        ErrorKind::ExpiredSignature => "token expired",
                        ErrorKind::ImmatureSignature => "token not valid yet (nbf)",
                        ErrorKind::InvalidSignature => "token signature invalid",
                        ErrorKind::InvalidAudience | ErrorKind::InvalidIssuer => {
                            "token not issued for this service (iss or aud)"
                        }
                        ErrorKind::MissingRequiredClaim(_) => "token lacks a required claim",
                        _ => "invalid token",
                    }
                    .into(),
                )
            })?
            .claims;
        let now = chrono::Utc::now().timestamp();
        if claims.iat.is_some_and(|iat| iat > now + self.leeway) {
            return Err(ApiError::Unauthorized(
                "token issued in the future (iat)".into(),
            ));
        }
        if claims.exp - now > self.max_lifetime {
            return Err(ApiError::Unauthorized(
                "token valid for longer than this service accepts (exp)".into(),
            ));
        }
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

/// Extractor: the calling user. The per-address bucket comes first (a
/// flood is answered 429 before any token is verified), then the
/// credential (401 without a valid one).
#[derive(Debug)]
pub struct User(pub UserId);

impl FromRequest for User {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let user = crate::rate_limit::check_client_address(req)
            .and_then(|()| authenticator(req))
            .and_then(|a| a.user(req));
        std::future::ready(user.map(Self))
    }
}
