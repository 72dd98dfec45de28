//! The gateway's page in a real browser: headless Chromium, driven over the DevTools
//! protocol, clicks through the demo client (token → customer → orders → live feed) against
//! the whole system in-process, waits for the feed's tables to show the orders' outcomes
//! and the customer's credit, opens the operations view, and fails on any console error,
//! uncaught exception or error log entry of the page.
//!
//! Without Chromium the test is skipped with a message, except under CI (`CI=true`),
//! where it fails: `./dev setup` installs Debian's `chromium`. With
//! `FEEDLINE_SCREENSHOT=docs/gateway-page.png` (relative to the workspace) it writes the
//! page after the flow there, and the operations view beside it (`gateway-page-ops.png`).

mod cdp;
#[path = "../common/mod.rs"]
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::system::Launch;
use feedline::CancellationToken;
use serde_json::json;

use cdp::Browser;

const WIDTH: u32 = 1280;
const HEIGHT: u32 = 900;

/// The whole system on port 0 with a fresh prefix and databases; stopped when the guard drops.
/// The gateway's and order-view's base URLs, and the guard that stops them.
async fn start_system() -> (String, String, tokio_util::sync::DropGuard) {
    feedline::telemetry::init();
    let token = CancellationToken::new();
    let system = Launch::new("[discovery]\nheartbeat_ms = 500\n")
        .await
        .start(token.clone())
        .await;
    system
        .ready(Duration::from_secs(90))
        .await
        .expect("system ready");
    let base = format!("http://{}", system.gateway);
    let view = format!("http://{}", system.order_view);
    tokio::spawn(system.join(Duration::from_secs(10)));
    (base, view, token.drop_guard())
}

/// Chromium, or `None` when it is missing outside CI (the caller skips).
fn chromium() -> Option<PathBuf> {
    let found = cdp::find_chromium();
    if found.is_none() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "chromium is not installed (./dev setup installs it); CI runs the browser test"
        );
        eprintln!(
            "skipping the browser test: no chromium on the PATH (./dev setup installs it, or set FEEDLINE_CHROMIUM)"
        );
    }
    found
}

/// A relative path from the workspace's root (cargo runs a test in its package's directory).
fn workspace_path(path: PathBuf) -> PathBuf {
    if path.is_absolute() {
        return path;
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the cli crate sits in the workspace")
        .join(path)
}

/// `-ops` before the extension: `docs/page.png` → `docs/page-ops.png`.
fn beside(path: &std::path::Path, suffix: &str) -> PathBuf {
    let stem = path.file_stem().unwrap_or_default().to_string_lossy();
    let extension = path
        .extension()
        .map(|e| format!(".{}", e.to_string_lossy()))
        .unwrap_or_default();
    path.with_file_name(format!("{stem}{suffix}{extension}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_page_runs_the_demo_flow_and_shows_the_operations_view_without_errors() {
    let Some(chromium) = chromium() else {
        return;
    };
    let (base, view, _stop) = start_system().await;
    // Declared after the system: dropped (killed) first, before the system stops under it.
    let browser = Browser::launch(&chromium, WIDTH, HEIGHT).await;
    browser.open(&format!("{base}/")).await;

    // 1. A token: the demo client is an admin, so the operations tab appears.
    browser.click("get-token").await;
    browser
        .wait_for(
            "a token",
            "document.getElementById('token-result').textContent.startsWith('token issued')",
        )
        .await;
    assert_eq!(
        browser
            .eval("document.getElementById('tab-ops').hidden")
            .await,
        json!(false)
    );

    // The live feed first, so the orders' outcomes below can only come from it.
    browser.click("connect").await;
    browser
        .wait_for(
            "the feed to connect",
            "document.getElementById('feed-state').textContent === 'connected'",
        )
        .await;

    // 2. A customer with 100.00 of credit.
    let name = format!("Grace {}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
    browser.fill("customer-name", &name).await;
    browser.fill("customer-limit", "100.00").await;
    browser.click("register").await;
    let customer = browser
        .wait_for(
            "the customer registered",
            "document.getElementById('customer-result').textContent.startsWith('20') \
             && document.getElementById('order-customer').value",
        )
        .await;
    let customer = customer.as_str().unwrap().to_owned();

    // 3. Two orders without waiting for their outcome: 60.00 fits the credit, the second
    // 60.00 does not. The command answers PENDING; only the feed can say more.
    browser
        .eval("document.getElementById('order-wait').checked = false")
        .await;
    for n in 1..=2 {
        browser.fill("order-total", "60.00").await;
        browser.click("place").await;
        browser
            .wait_for(
                &format!("order {n} accepted"),
                &format!(
                    "document.querySelectorAll('#orders tr[data-id]').length >= {n} \
                     && document.getElementById('order-result').textContent.startsWith('20')"
                ),
            )
            .await;
    }

    // 4. The feed's table: both orders of this customer in a final status, told by the feed.
    let statuses = browser
        .wait_for(
            "both orders settled in the feed's table",
            &format!(
                "(() => {{ const rows = [...document.querySelectorAll('#orders tr[data-feed=\"yes\"]')]\
                     .filter(r => r.cells[1].title === {customer:?}); \
                   const s = rows.map(r => r.dataset.status).sort(); \
                   return s.length === 2 && !s.includes('PENDING') ? s : null; }})()"
            ),
        )
        .await;
    assert_eq!(statuses, json!(["APPROVED", "REJECTED"]));
    let row = browser
        .eval(&format!(
            "[...document.querySelectorAll('#orders tr[data-feed=\"yes\"]')]\
               .filter(r => r.cells[1].title === {customer:?})\
               .map(r => [...r.cells].slice(0, 5).map(c => c.textContent))"
        ))
        .await;
    for cells in row.as_array().unwrap() {
        assert_eq!(cells[1], json!(name), "the customer's name: {row}");
        assert_eq!(cells[3], json!("60.00"), "the total: {row}");
        assert!(
            !cells[4].as_str().unwrap().is_empty(),
            "the last change: {row}"
        );
    }
    // The customer's credit: 60.00 reserved, 40.00 left.
    let credit = browser
        .wait_for(
            "the customer's credit in the feed's table",
            &format!(
                "(() => {{ const r = document.getElementById('customer-' + {customer:?}); \
                   if (!r || r.cells[3].textContent !== '60.00') return null; \
                   return [...r.cells].slice(1, 5).map(c => c.textContent); }})()"
            ),
        )
        .await;
    assert_eq!(credit, json!([name, "100.00", "60.00", "40.00"]));

    let screenshot =
        std::env::var_os("FEEDLINE_SCREENSHOT").map(|path| workspace_path(path.into()));
    if let Some(path) = &screenshot {
        std::fs::write(path, browser.screenshot().await).expect("write the screenshot");
    }

    // The operations view: the fleet from the directory, consumer lag, the DLQ topics.
    browser.click("tab-ops").await;
    browser
        .wait_for(
            "the fleet's rows",
            "(() => { const services = new Set([...document.querySelectorAll('#fleet tr')]\
                 .map(r => r.cells[0].textContent)); \
               return ['gateway', 'orders', 'customers', 'order-view']\
                 .every(s => services.has(s)); })()",
        )
        .await;
    browser
        .wait_for(
            "consumer lag rows",
            "document.querySelectorAll('#lag tr td.num').length > 0",
        )
        .await;
    browser
        .wait_for(
            "the DLQ topics",
            "[...document.querySelectorAll('#dlq td.mono')].some(c => c.textContent.endsWith('.dlq'))",
        )
        .await;
    // Figures once order-view exports its freshness histogram, a dash while it does not.
    let metrics = reqwest::get(format!("{view}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    if metrics.contains("feedline_order_view_freshness_seconds_bucket") {
        browser
            .wait_for(
                "freshness figures",
                "['fresh-p50', 'fresh-p99'].every(id => \
                   /^[0-9.]+ (ms|s|min)$/.test(document.getElementById(id).textContent))",
            )
            .await;
    } else {
        assert_eq!(
            browser
                .eval("document.getElementById('fresh-p50').textContent")
                .await,
            json!("—"),
            "no histogram, no figure"
        );
    }
    assert_eq!(
        browser
            .eval("document.getElementById('demo-view').hidden")
            .await,
        json!(true)
    );
    if let Some(path) = &screenshot {
        std::fs::write(beside(path, "-ops"), browser.screenshot().await)
            .expect("write the screenshot");
    }

    let problems = browser.problems();
    assert!(problems.is_empty(), "the page reported: {problems:#?}");
}

#[test]
fn console_errors_exceptions_and_error_logs_are_problems() {
    let console = json!({"method": "Runtime.consoleAPICalled",
        "params": {"type": "error", "args": [{"type": "string", "value": "boom"}]}});
    assert_eq!(cdp::problem(&console).unwrap(), "console.error: boom");
    let log = json!({"method": "Runtime.consoleAPICalled", "params": {"type": "log", "args": []}});
    assert_eq!(cdp::problem(&log), None);
    let thrown = json!({"method": "Runtime.exceptionThrown",
        "params": {"exceptionDetails": {"text": "Uncaught", "exception": {"description": "TypeError: x is null"}}}});
    assert!(
        cdp::problem(&thrown)
            .unwrap()
            .contains("TypeError: x is null")
    );
    let refused = json!({"method": "Log.entryAdded",
        "params": {"entry": {"level": "error", "source": "security", "text": "Refused to execute inline script"}}});
    assert!(cdp::problem(&refused).unwrap().contains("Refused"));
    let warning =
        json!({"method": "Log.entryAdded", "params": {"entry": {"level": "warning", "text": "x"}}});
    assert_eq!(cdp::problem(&warning), None);
}

#[test]
fn the_ops_screenshot_sits_beside_the_first() {
    assert_eq!(
        beside(std::path::Path::new("docs/gateway-page.png"), "-ops"),
        PathBuf::from("docs/gateway-page-ops.png")
    );
}
