//! What the Redis benchmarks share: their runtime and the Redis they use.

use common::settings::RedisSettings;

/// Two worker threads, as the api's small deployments run.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The Redis of `COUPON_TEST_REDIS_URL` (default the local one); with a
/// `rediss://` URL, `COUPON_TEST_REDIS_TLS_CA` is the CA of its certificate
/// (TLS on vs off).
pub fn redis_settings() -> RedisSettings {
    RedisSettings {
        url: std::env::var("COUPON_TEST_REDIS_URL")
            .unwrap_or_else(|_| "redis://127.0.0.1:6379".into()),
        tls_ca_file: std::env::var("COUPON_TEST_REDIS_TLS_CA")
            .ok()
            .filter(|ca| !ca.is_empty()),
        ..RedisSettings::default()
    }
}
