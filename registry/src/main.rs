#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feedline::service::launch(feedline_registry::DEFAULTS, feedline_registry::run).await
}
