use api::startup::Application;
use common::settings::Settings;

/// glibc's malloc took about a tenth of the api's CPU under load; mimalloc
/// less than half of that (docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    // `api healthcheck`: the container healthcheck (no curl in the image).
    if std::env::args().nth(1).as_deref() == Some("healthcheck") {
        std::process::exit(if common::healthcheck::probe(settings.http.port) {
            0
        } else {
            1
        });
    }
    common::telemetry::init(&settings.log, "coupon-api");
    settings.log_notices();
    settings.require_secure_dependencies(true, true)?;
    let app = Application::build(settings).await?;
    let stopped = app
        .run_until_stopped(async {
            common::shutdown::signal().await;
            tracing::info!("shutdown signal received");
        })
        .await;
    common::telemetry::shutdown();
    stopped
}
