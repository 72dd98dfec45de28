fn main() -> anyhow::Result<()> {
    feedline::service::main(feedline_order_view::DEFAULTS, feedline_order_view::run)
}
