//! The compatibility gate, end to end: the `feedline` binary against the project's registry
//! (in-process, on the real broker). A change that breaks readers exits 1 naming the field;
//! a compatible one exits 0.

use std::path::{Path, PathBuf};
use std::process::Command;

use feedline::{CancellationToken, Settings};

const CONTRACTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../schemas/avro");

struct Gate {
    prefix: String,
    registry: String,
    _token: tokio_util::sync::DropGuard,
}

async fn start() -> Gate {
    let prefix = format!("gate{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let bootstrap =
        std::env::var("FEEDLINE_TEST_KAFKA").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let settings = Settings::from_toml(&format!(
        "[kafka]\nbootstrap_servers = \"{bootstrap}\"\ntopic_prefix = \"{prefix}\"\n[http]\nport = 0\n[registry_server]\ndev_mode = true\n"
    ))
    .unwrap();
    let token = CancellationToken::new();
    let running = feedline_registry::spawn(settings, token.clone())
        .await
        .unwrap();
    Gate {
        prefix,
        registry: format!("http://{}", running.addr),
        _token: token.drop_guard(),
    }
}

impl Gate {
    fn feedline(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_feedline"))
            .args(args)
            .args(["--registry-url", &self.registry])
            .env("FEEDLINE_KAFKA__TOPIC_PREFIX", &self.prefix)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// A copy of the contracts with `PlaceOrder` given one more field.
fn contracts_with_extra_field(field: serde_json::Value) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("feedline-gate-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    for entry in std::fs::read_dir(CONTRACTS).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let file = dir.join("PlaceOrder.avsc");
    let mut schema: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    schema["fields"].as_array_mut().unwrap().push(field);
    std::fs::write(&file, schema.to_string()).unwrap();
    dir
}

fn dir(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_field_without_default_is_refused_and_with_default_accepted() {
    let gate = start().await;
    let (code, out, err) = gate.feedline(&["schema", "register", "--dir", CONTRACTS]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains(&format!("{}order-commands-value", gate.prefix)),
        "{out}"
    );

    // Unchanged contracts pass.
    let (code, out, err) = gate.feedline(&["schema", "check", "--dir", CONTRACTS]);
    assert_eq!(code, 0, "{out}{err}");

    // New field without a default under BACKWARD: readers of the new schema cannot read old data.
    let breaking =
        contracts_with_extra_field(serde_json::json!({"name": "currency", "type": "string"}));
    let (code, out, err) = gate.feedline(&["schema", "check", "--dir", dir(&breaking)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(out.contains("INCOMPATIBLE"), "{out}");
    assert!(
        out.contains("currency"),
        "the message names the field: {out}"
    );
    // And the registry refuses to register it (409), so the CLI fails too.
    let (code, out, err) = gate.feedline(&["schema", "register", "--dir", dir(&breaking)]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("409"), "{err}");

    // The same field with a default is a compatible change.
    let fine = contracts_with_extra_field(
        serde_json::json!({"name": "currency", "type": "string", "default": "EUR"}),
    );
    let (code, out, err) =
        gate.feedline(&["schema", "check", "--dir", dir(&fine), "--output", "json"]);
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(
        report
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["compatible"] == true)
    );
    let (code, out, err) = gate.feedline(&["schema", "register", "--dir", dir(&fine)]);
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_errors_are_one_line_and_exit_codes_are_reliable() {
    let gate = start().await;
    let (code, _, err) = gate.feedline(&["schema", "check", "--dir", "/nonexistent"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("error: cannot read /nonexistent"), "{err}");
    assert!(!err.contains("panicked"));
    let (code, _, err) = gate.feedline(&["schema", "frobnicate"]);
    assert_eq!(code, 2, "usage errors exit 2: {err}");
    let (code, _, err) = gate.feedline(&["schema", "get", "no-such-subject"]);
    assert_eq!(code, 1);
    assert!(err.contains("no-such-subject"), "{err}");
    let unreachable = Command::new(env!("CARGO_BIN_EXE_feedline"))
        .args(["schema", "list", "--registry-url", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unreachable.stderr).contains("unreachable"));
}
