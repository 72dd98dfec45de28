//! A registry on port 0 (the tests, the in-process system) announces itself with the address
//! it is bound to, its announcements' schema registered with itself: `registry.url` still
//! says the default port, where another registry (or none) listens.

mod common;

use common::*;
use feedline::CancellationToken;
use feedline::discovery::Directory;
use feedline_testkit::{PATIENCE, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_on_port_0_is_in_the_directory_at_its_bound_address() {
    let announcing = settings(&random_prefix())
        .with_overrides("[discovery]\nenabled = true\n")
        .unwrap();
    let reg = TestRegistry::with(announcing).await;
    let reader = settings(&reg.prefix)
        .with_overrides(&format!("[registry]\nurl = \"{}\"\n", reg.url))
        .unwrap();
    let token = CancellationToken::new();
    let directory = Directory::start(&reader, token.clone()).await.unwrap();

    let instance = eventually(
        "the registry announced at its bound address",
        PATIENCE,
        async || {
            directory
                .instances()
                .into_iter()
                .find(|i| i.service == "registry" && i.url == reg.url)
        },
    )
    .await;
    assert!(instance.up, "{instance:?}");
    token.cancel();
    reg.stop().await;
}
