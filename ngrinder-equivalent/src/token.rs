//! User tokens, minted per request without allocation storms: the header is
//! encoded once, the HMAC key is set up once, and each token is written into
//! a buffer the caller reuses.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Mints HS256 tokens with `sub` = user id, valid for `ttl_secs`.
#[derive(Clone)]
pub struct Minter {
    key: Hmac<Sha256>,
    header: String,
    exp: i64,
    /// `,"iss":…,"aud":…` when the api checks them (`APP_AUTH__JWT_ISSUER`,
    /// `APP_AUTH__JWT_AUDIENCE`, read as the api reads them), else empty.
    service: String,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("exp", &self.exp)
            .finish_non_exhaustive()
    }
}

impl Minter {
    pub fn new(secret: &str, ttl_secs: i64) -> anyhow::Result<Self> {
        let key = Hmac::<Sha256>::new_from_slice(secret.as_bytes())
            .map_err(|e| anyhow::anyhow!("JWT secret: {e}"))?;
        let mut service = String::new();
        for (claim, var) in [
            ("iss", "APP_AUTH__JWT_ISSUER"),
            ("aud", "APP_AUTH__JWT_AUDIENCE"),
        ] {
            if let Ok(value) = std::env::var(var) {
                service.push_str(&format!(",\"{claim}\":{}", serde_json::Value::from(value)));
            }
        }
        Ok(Self {
            key,
            header: URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#),
            exp: chrono::Utc::now().timestamp() + ttl_secs,
            service,
        })
    }

    /// Writes `Bearer <token>` for `user` into `out` (cleared first). User
    /// ids are `[A-Za-z0-9._:@-]`, so the claims need no escaping.
    pub fn bearer(&self, user: &str, out: &mut String) {
        out.clear();
        out.push_str("Bearer ");
        let start = out.len();
        out.push_str(&self.header);
        out.push('.');
        let claims = format!(r#"{{"sub":"{user}","exp":{}{}}}"#, self.exp, self.service);
        URL_SAFE_NO_PAD.encode_string(claims.as_bytes(), out);
        let mut mac = self.key.clone();
        mac.update(&out.as_bytes()[start..]);
        let signature = mac.finalize().into_bytes();
        out.push('.');
        URL_SAFE_NO_PAD.encode_string(signature, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_as_hs256_with_the_user_as_subject() {
        let minter = Minter::new("s3cret", 60).unwrap();
        let mut out = String::new();
        minter.bearer("user-1", &mut out);
        let token = out.strip_prefix("Bearer ").unwrap();
        let parts: Vec<&str> = token.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims: serde_json::Value =
            serde_json::from_slice(&URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        assert_eq!(claims["sub"], "user-1");
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").unwrap();
        mac.update(format!("{}.{}", parts[0], parts[1]).as_bytes());
        mac.verify_slice(&URL_SAFE_NO_PAD.decode(parts[2]).unwrap())
            .unwrap();
        // The buffer is reused.
        minter.bearer("user-2", &mut out);
        assert_eq!(out.matches("Bearer ").count(), 1);
    }
}
