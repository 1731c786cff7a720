//! The admin commands of `issuer-worker` (`admin.*`): where they reach the
//! api.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminSettings {
    /// The api's base URL for `issuer-worker campaigns` (its admin
    /// endpoints, with `auth.admin_token`); `--api` overrides it. Plain
    /// HTTP: run the command where an api instance or the balancer answers.
    pub api_url: String,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            api_url: "http://127.0.0.1:8080".into(),
        }
    }
}
