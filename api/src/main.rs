use api::startup::Application;
use common::settings::Settings;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::load()?;
    common::telemetry::init(&settings.log);
    let app = Application::build(settings).await?;
    app.run_until_stopped(async {
        common::shutdown::signal().await;
        tracing::info!("shutdown signal received");
    })
    .await
}
