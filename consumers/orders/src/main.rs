#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feedline::service::launch(feedline_orders::DEFAULTS, feedline_orders::run).await
}
