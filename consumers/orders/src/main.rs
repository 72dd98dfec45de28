fn main() -> anyhow::Result<()> {
    feedline::service::main(feedline_orders::DEFAULTS, feedline_orders::run)
}
