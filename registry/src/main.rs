fn main() -> anyhow::Result<()> {
    // `feedline-registry hash-password`: makes a users' password_hash, reading the password
    // from standard input (never from the command line, where `ps` would show it).
    if std::env::args().nth(1).as_deref() == Some("hash-password") {
        return feedline_registry::auth::hash_password_from_stdin();
    }
    feedline::service::main(feedline_registry::DEFAULTS, feedline_registry::run)
}
