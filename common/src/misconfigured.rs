//! Telling a dependency that refuses this process's configuration from one
//! that is down. A refusal — the server's certificate does not verify
//! against the configured CA, or the credentials are rejected — is this
//! instance's fault (a rollout with a wrong secret or CA): it takes the
//! instance out of rotation, so the rollout stops there. An outage is shared
//! by every instance and does not (see the api's `/readyz`).

/// What in an error's text names a refusal of TLS or credentials, in the
/// words of rustls, OpenSSL, Redis and PostgreSQL (lower case).
const MARKERS: [&str; 8] = [
    "certificate",
    "handshake",
    "unknownissuer",
    "wrongpass",
    "noauth",
    "authentication fail",
    "password authentication",
    "no pg_hba.conf entry",
];

/// The first message in `error`'s chain of causes that names a refused
/// certificate or credential, if one does.
pub fn refusal(error: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        let lower = text.to_lowercase();
        if MARKERS.iter().any(|m| lower.contains(m)) {
            return Some(text);
        }
        next = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("redis: {0}")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn refusals_are_found_anywhere_in_the_chain_and_outages_are_not() {
        let tls = Outer(std::io::Error::other(
            "invalid peer certificate: UnknownIssuer",
        ));
        assert!(refusal(&tls).unwrap().contains("UnknownIssuer"));
        let auth = std::io::Error::other(
            "error returned from database: password authentication failed for user \"coupons\"",
        );
        assert!(refusal(&auth).is_some());
        let down = Outer(std::io::Error::new(
            std::io::ErrorKind::ConnectionRefused,
            "Connection refused (os error 111)",
        ));
        assert_eq!(refusal(&down), None);
    }
}
