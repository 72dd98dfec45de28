#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feedline::service::launch(feedline_customers::DEFAULTS, feedline_customers::run).await
}
