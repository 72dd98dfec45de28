#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feedline::service::launch(feedline_gateway::DEFAULTS, feedline_gateway::run).await
}
