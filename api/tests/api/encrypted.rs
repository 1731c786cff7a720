//! Encrypted and authenticated connections, each against a real server the
//! test starts with certificates it made (`openssl`): Apache Kafka over SSL
//! and SASL_SSL (SCRAM-SHA-512, PLAIN), Redis over TLS (`rediss://`), and
//! PostgreSQL with `sslmode=verify-full`. The api and the worker run with
//! those settings and a coupon goes all the way to its row; a wrong
//! password or a certificate from another authority is refused without a
//! hang.

use std::time::{Duration, Instant};

use crate::helpers::*;
use common::settings::{KafkaSecurityProtocol, SaslMechanism, Settings};
use common::testkit::tls::TestCa;
use reqwest::StatusCode;
use secrecy::SecretString;

/// Points `settings` at `broker`'s TLS listener (SASL when `sasl` is given),
/// trusting `ca`.
fn use_secured_broker(
    settings: &mut Settings,
    broker: &OwnBroker,
    ca: &TestCa,
    sasl: Option<SaslMechanism>,
) {
    let kafka = &mut settings.kafka;
    kafka.brokers = broker.secured_address(sasl.is_some());
    kafka.ssl_ca_location = Some(ca.cert().display().to_string());
    kafka.security_protocol = KafkaSecurityProtocol::Ssl;
    if let Some(mechanism) = sasl {
        kafka.security_protocol = KafkaSecurityProtocol::SaslSsl;
        kafka.sasl_mechanism = mechanism;
        kafka.sasl_username = Some(KAFKA_USER.to_owned());
        kafka.sasl_password = Some(SecretString::from(KAFKA_PASSWORD));
    }
}

/// Redis over TLS only, with client certificates, and PostgreSQL with
/// `sslmode=verify-full`: services of the test's own, signed by `ca`, with
/// the schema migrated. Settings point at them; the URL for the test's own
/// reads of that PostgreSQL is returned.
async fn use_encrypted_stores(
    settings: &mut Settings,
    ca: &TestCa,
    redis: &OwnRedis,
    pg: &OwnPostgres,
) -> String {
    let client = ca.issue("api-client");
    settings.redis.url = redis.url();
    settings.redis.tls_ca_file = Some(ca.cert().display().to_string());
    settings.redis.tls_cert_file = Some(client.cert.display().to_string());
    settings.redis.tls_key_file = Some(client.key.display().to_string());
    settings.database.url = SecretString::from(format!(
        "postgres://postgres@localhost:{}/postgres?sslmode=verify-full",
        pg.port
    ));
    settings.database.ssl_root_cert = Some(ca.cert().display().to_string());
    // The test's own reads use TLS too, so that every connection
    // PostgreSQL sees is one.
    let own = format!(
        "postgres://postgres@127.0.0.1:{}/postgres?sslmode=require",
        pg.port
    );
    issuer_worker::migration::migrate(&db_at(&own).await)
        .await
        .expect("migrations");
    own
}

/// `/readyz`: status and body.
async fn readyz(api: &TestApi) -> (StatusCode, serde_json::Value) {
    reply(
        api.client
            .get(format!("{}/readyz", api.ops_address))
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Issues one coupon through `api` and waits for the worker's row in the
/// PostgreSQL at `db_url`.
async fn one_coupon_reaches_its_row(api: &TestApi, db_url: &str, user: &str) {
    let campaign = api.open_campaign(10).await;
    let (status, body) = api.issue(&campaign, user).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["outcome"], "accepted", "{body}");
    wait_for_rows(&db_at(db_url).await, &campaign, 1, Duration::from_secs(60)).await;
}

/// The connections of the api and the worker, as PostgreSQL sees them:
/// (with TLS, without).
async fn postgres_connections_by_tls(db_url: &str) -> (i64, i64) {
    use sea_orm::{ConnectionTrait, Statement};
    let db = db_at(db_url).await;
    let row = db
        .query_one_raw(Statement::from_string(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT count(*) FILTER (WHERE s.ssl) AS tls, count(*) FILTER (WHERE NOT s.ssl) AS plain \
             FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
             WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()",
        ))
        .await
        .unwrap()
        .unwrap();
    (
        row.try_get::<i64>("", "tls").unwrap(),
        row.try_get::<i64>("", "plain").unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_connection_encrypted_carries_a_coupon_to_its_row() {
    let ca = TestCa::new("stores");
    let broker = OwnBroker::start_secured(&ca);
    let redis = OwnRedis::start_tls(&ca, true);
    let pg = OwnPostgres::start_tls(&ca);
    for (sasl, user) in [
        (None, "tls-ssl"),
        (Some(SaslMechanism::ScramSha512), "tls-scram"),
        (Some(SaslMechanism::Plain), "tls-plain"),
    ] {
        let mut settings = test_settings().await;
        let db_url = use_encrypted_stores(&mut settings, &ca, &redis, &pg).await;
        use_secured_broker(&mut settings, &broker, &ca, sasl);
        settings.check_connections().unwrap();
        common::kafka::ensure_topics(&settings.kafka)
            .await
            .unwrap_or_else(|e| panic!("topics over {sasl:?}: {e:#}"));
        let api = spawn_api(&settings).await;
        let worker = spawn_worker(&settings).await;
        one_coupon_reaches_its_row(&api, &db_url, user).await;
        let (status, body) = readyz(&api).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for dependency in ["redis", "postgres", "kafka"] {
            assert_eq!(body["dependencies"][dependency], "up", "{body}");
        }
        let (tls, plain) = postgres_connections_by_tls(&db_url).await;
        assert!(tls > 0, "no TLS connection to PostgreSQL");
        assert_eq!(plain, 0, "a connection without TLS");
        worker.stop().await;
        api.stop().await;
    }
}

/// The step that needs the refused connection, and the request that shows it.
#[derive(Debug, Clone, Copy)]
enum Refused {
    /// Creating a campaign writes its row (PostgreSQL).
    Postgres,
    /// Issuing takes a slot at the gate (Redis).
    Redis,
    /// Issuing produces to Kafka.
    Kafka,
}

impl Refused {
    /// The dependency's name in `/readyz`.
    fn dependency(&self) -> &'static str {
        match self {
            Self::Postgres => "postgres",
            Self::Redis => "redis",
            Self::Kafka => "kafka",
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wrong_password_or_another_authority_is_refused_without_a_hang() {
    let ca = TestCa::new("servers");
    let stranger = TestCa::new("stranger");
    let broker = OwnBroker::start_secured(&ca);
    let redis = OwnRedis::start_tls(&ca, false);
    let pg = OwnPostgres::start_tls(&ca);
    let stranger_ca = stranger.cert().display().to_string();
    type Configure<'a> = Box<dyn Fn(&mut Settings) + 'a>;
    let cases: Vec<(&str, Refused, Configure)> = vec![
        (
            "Kafka: a wrong SCRAM password",
            Refused::Kafka,
            Box::new(|s| {
                use_secured_broker(s, &broker, &ca, Some(SaslMechanism::ScramSha512));
                s.kafka.sasl_password = Some(SecretString::from("not-the-password"));
            }),
        ),
        (
            "Kafka: a CA that did not sign the broker's certificate",
            Refused::Kafka,
            Box::new(|s| use_secured_broker(s, &broker, &stranger, None)),
        ),
        (
            "Redis: a CA that did not sign the server's certificate",
            Refused::Redis,
            Box::new(|s| {
                s.redis.url = redis.url();
                s.redis.tls_ca_file = Some(stranger_ca.clone());
            }),
        ),
        (
            "PostgreSQL: a CA that did not sign the server's certificate",
            Refused::Postgres,
            Box::new(|s| {
                s.database.url = SecretString::from(format!(
                    "postgres://postgres@localhost:{}/postgres?sslmode=verify-full",
                    pg.port
                ));
                s.database.ssl_root_cert = Some(stranger_ca.clone());
            }),
        ),
    ];
    for (case, refused, configure) in cases {
        let mut settings = test_settings().await;
        configure(&mut settings);
        settings.check_connections().unwrap();
        if let Refused::Kafka = refused {
            let started = Instant::now();
            let err = common::kafka::ensure_topics(&settings.kafka)
                .await
                .expect_err(case);
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "{case}: took {:?}",
                started.elapsed()
            );
            assert!(!format!("{err:#}").contains("not-the-password"), "{case}");
        }

        // The api starts (it needs no dependency to start) and answers the
        // request that needs the refused connection 503, within that
        // connection's timeout, giving nothing away.
        let api = spawn_api(&settings).await;
        let (status, body, took, within) = match refused {
            Refused::Kafka => {
                let campaign = api.open_campaign(10).await;
                let started = Instant::now();
                let (status, body) = api.issue(&campaign, "tls-refused").await;
                let within = settings.kafka.delivery_timeout() + Duration::from_secs(5);
                (status, body, started.elapsed(), within)
            }
            Refused::Redis => {
                let started = Instant::now();
                let (status, body) = api
                    .issue(&common::ids::CampaignId::new(), "tls-refused")
                    .await;
                (status, body, started.elapsed(), Duration::from_secs(3))
            }
            Refused::Postgres => {
                let started = Instant::now();
                let (status, body) = api
                    .create_campaign(serde_json::json!({ "name": "refused", "stock": 10 }))
                    .await;
                (status, body, started.elapsed(), Duration::from_secs(10))
            }
        };
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{case}: {body}");
        assert!(took < within, "{case}: answered after {took:?}");

        // The instance takes itself out of rotation and says which
        // dependency refused it; the others stay up.
        let (status, body) = readyz(&api).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{case}: {body}");
        assert_eq!(body["status"], "misconfigured", "{case}: {body}");
        for dependency in ["redis", "postgres", "kafka"] {
            let expected = if dependency == refused.dependency() {
                "misconfigured"
            } else {
                "up"
            };
            assert_eq!(body["dependencies"][dependency], expected, "{case}: {body}");
        }
        assert!(!body.to_string().contains("not-the-password"), "{case}");
        api.stop().await;
    }
}
