#[global_allocator]
static ALLOCATOR: feedline::Allocator = feedline::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    feedline::service::launch(feedline_registry::DEFAULTS, feedline_registry::run).await
}
