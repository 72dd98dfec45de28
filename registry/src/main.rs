fn main() -> anyhow::Result<()> {
    feedline::service::main(feedline_registry::DEFAULTS, feedline_registry::run)
}
