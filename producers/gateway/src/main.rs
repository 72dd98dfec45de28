fn main() -> anyhow::Result<()> {
    feedline::service::main(feedline_gateway::DEFAULTS, feedline_gateway::run)
}
