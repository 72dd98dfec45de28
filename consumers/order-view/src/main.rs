#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feedline::service::launch(feedline_order_view::DEFAULTS, feedline_order_view::run).await
}
