fn main() -> anyhow::Result<()> {
    feedline::service::main(feedline_customers::DEFAULTS, feedline_customers::run)
}
