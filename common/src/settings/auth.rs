//! Who may call the api (`auth.*`): the admin token, user JWTs or a
//! gateway's header.

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// How the api learns who the user is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMode {
    /// `Authorization: Bearer <JWT>`, `sub` is the user id.
    #[default]
    Jwt,
    /// `X-User-Id` set by a gateway that verified the caller.
    TrustedHeader,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AuthSettings {
    pub mode: AuthMode,
    #[serde(serialize_with = "super::redacted_option")]
    pub admin_token: Option<SecretString>,
    /// HS256 or RS256; only the configured algorithm is accepted.
    pub jwt_algorithm: JwtAlgorithm,
    /// HS256 key for user JWTs.
    #[serde(serialize_with = "super::redacted_option")]
    pub jwt_secret: Option<SecretString>,
    /// RS256 public key (PEM), inline...
    pub jwt_public_key: Option<String>,
    /// ...or in a file.
    pub jwt_public_key_file: Option<String>,
    /// When set, tokens must carry this `iss` (required in production).
    pub jwt_issuer: Option<String>,
    /// When set, tokens must carry this `aud` (required in production).
    pub jwt_audience: Option<String>,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`.
    pub jwt_leeway_secs: u64,
    /// The longest a token may still be valid for (`exp` − now): a token
    /// that claims to live longer (a year 9999 `exp`) is refused, so a
    /// stolen one cannot outlive this.
    pub jwt_max_lifetime_secs: u64,
    /// Header read in `trusted-header` mode.
    pub user_header: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum JwtAlgorithm {
    #[default]
    HS256,
    RS256,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            mode: AuthMode::Jwt,
            admin_token: None,
            jwt_algorithm: JwtAlgorithm::HS256,
            jwt_secret: None,
            jwt_public_key: None,
            jwt_public_key_file: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_leeway_secs: 5,
            jwt_max_lifetime_secs: 86_400,
            user_header: "X-User-Id".into(),
        }
    }
}
