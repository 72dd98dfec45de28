//! Interoperability with an independent Avro implementation: Python's fastavro writes
//! Confluent-framed messages that `feedline consume` must decode, and decodes what
//! `feedline produce` wrote. Skipped, saying so, where fastavro is not installed
//! (`python3 -m pip install fastavro`).

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::{read_all, start};
use feedline::codec::{RegistryClient, SchemaResolver};
use rdkafka::Message;
use serde_json::{Value, json};

/// Every kind of Avro type the converter handles, once.
const SCHEMA: &str = r#"{"type": "record", "name": "Everything", "namespace": "interop", "fields": [
    {"name": "id", "type": {"type": "string", "logicalType": "uuid"}},
    {"name": "at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    {"name": "day", "type": {"type": "int", "logicalType": "date"}},
    {"name": "n", "type": "int"},
    {"name": "big", "type": "long"},
    {"name": "ratio", "type": "double"},
    {"name": "f", "type": "float"},
    {"name": "ok", "type": "boolean"},
    {"name": "name", "type": "string"},
    {"name": "raw", "type": "bytes"},
    {"name": "price", "type": {"type": "bytes", "logicalType": "decimal", "precision": 10, "scale": 2}},
    {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED", "GREEN", "BLUE"]}},
    {"name": "tags", "type": {"type": "array", "items": "string"}},
    {"name": "attrs", "type": {"type": "map", "values": "long"}},
    {"name": "maybe", "type": ["null", "string"]},
    {"name": "hash", "type": {"type": "fixed", "name": "Hash", "size": 4}},
    {"name": "payload", "type": [
        {"type": "record", "name": "A", "fields": [{"name": "a", "type": "long"}]},
        {"type": "record", "name": "B", "fields": [{"name": "b", "type": "string"}]}
    ]}
]}"#;

/// One record in the CLI's plain JSON (what produce takes and consume prints).
fn record(i: i64) -> Value {
    json!({
        "id": "0b6f6d4e-8f0a-4c59-9a49-5a2a3c1f7e10",
        "at": 1_764_000_000_123i64 + i,
        "day": 20_416,
        "n": -5 - i,
        "big": 9_007_199_254_740_993i64,
        "ratio": 0.25,
        "f": 1.5,
        "ok": i % 2 == 0,
        "name": "héllo ✓",
        "raw": BASE64.encode([0u8, 1, 2, 255]),
        "price": "-12.34",
        "color": "GREEN",
        "tags": ["x", "y"],
        "attrs": {"k": 1, "l": -2},
        "maybe": if i == 0 { Value::Null } else { json!("m") },
        "hash": BASE64.encode(*b"\xde\xad\xbe\xef"),
        "payload": if i == 0 { json!({"a": 7}) } else { json!({"b": "bee"}) },
    })
}

/// Reads the plain JSON records on stdin, writes each as a Confluent-framed message with
/// fastavro (base64 per line); the second output line per record is fastavro's own Avro
/// JSON encoding of it.
const PY_WRITE: &str = r#"
import base64, decimal, io, json, struct, sys
import fastavro
schema = fastavro.parse_schema(json.loads(sys.argv[1]))
schema_id = int(sys.argv[2])
for line in sys.stdin:
    rec = json.loads(line)
    for field in ("raw", "hash"):
        rec[field] = base64.b64decode(rec[field])
    rec["price"] = decimal.Decimal(rec["price"])
    rec["payload"] = ("interop.B" if "b" in rec["payload"] else "interop.A", rec["payload"])
    buf = io.BytesIO()
    buf.write(b"\x00" + struct.pack(">I", schema_id))
    fastavro.schemaless_writer(buf, schema, rec)
    print(base64.b64encode(buf.getvalue()).decode())
    text = io.StringIO()
    fastavro.json_writer(text, schema, [rec])
    print(text.getvalue().strip())
"#;

/// Reads base64 Confluent-framed messages on stdin and prints each decoded by fastavro,
/// with its schema id, in the CLI's plain JSON conventions.
const PY_READ: &str = r#"
import base64, datetime, decimal, io, json, sys, uuid
import fastavro
schema = fastavro.parse_schema(json.loads(sys.argv[1]))
epoch = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
def plain(v):
    if isinstance(v, dict): return {k: plain(x) for k, x in v.items()}
    if isinstance(v, list): return [plain(x) for x in v]
    if isinstance(v, (bytes, bytearray)): return base64.b64encode(v).decode()
    if isinstance(v, uuid.UUID): return str(v)
    if isinstance(v, datetime.datetime): return (v - epoch) // datetime.timedelta(milliseconds=1)
    if isinstance(v, datetime.date): return (v - datetime.date(1970, 1, 1)).days
    if isinstance(v, decimal.Decimal): return str(v)
    return v
for line in sys.stdin:
    data = base64.b64decode(line.strip())
    assert data[0] == 0, "magic byte"
    value = fastavro.schemaless_reader(io.BytesIO(data[5:]), schema, schema)
    print(json.dumps({"schema_id": int.from_bytes(data[1:5], "big"), "value": plain(value)}))
"#;

fn fastavro_missing() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import fastavro"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        println!(
            "SKIPPED: python3 with fastavro is not installed (python3 -m pip install fastavro); the interoperability test did not run"
        );
    }
    !ok
}

async fn python(script: &str, args: &[&str], input: &str) -> String {
    let mut child = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stdin, input.as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = child.wait_with_output().await.unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feedline_consume_decodes_what_fastavro_wrote() {
    if fastavro_missing() {
        return;
    }
    let env = start().await;
    let topic = env.topic("interop-in", 1).await;
    let registry = RegistryClient::new(&env.settings.registry);
    let id = registry
        .register(&feedline_schemas::value_subject(&topic), SCHEMA)
        .await
        .unwrap();
    let records = [record(0), record(1)];
    let written = python(
        PY_WRITE,
        &[SCHEMA, &id.to_string()],
        &common::lines(&records),
    )
    .await;
    let written: Vec<&str> = written.lines().collect();
    assert_eq!(written.len(), 4, "{written:?}");
    let producer = env.producer();
    for framed in written.iter().step_by(2) {
        let bytes = BASE64.decode(framed).unwrap();
        producer
            .send(feedline::Outgoing::new(&topic, None, &bytes))
            .await
            .unwrap();
    }

    let run = env.feedline(&["consume", &topic]).await.ok();
    assert_eq!(run.json_lines(), records, "{run:?}");
    // Avro's JSON encoding, as fastavro's json_writer prints it.
    let run = env.feedline(&["consume", &topic, "--avro-json"]).await.ok();
    let fastavro_json: Vec<Value> = written
        .iter()
        .skip(1)
        .step_by(2)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(run.json_lines(), fastavro_json, "{run:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fastavro_decodes_what_feedline_produce_wrote() {
    if fastavro_missing() {
        return;
    }
    let env = start().await;
    let topic = env.topic("interop-out", 1).await;
    let avsc = std::env::temp_dir().join(format!("{topic}.avsc"));
    std::fs::write(&avsc, SCHEMA).unwrap();
    let records = [record(0), record(1)];
    env.feedline_with(
        &["produce", &topic, "--schema", avsc.to_str().unwrap()],
        Some(&common::lines(&records)),
    )
    .await
    .ok();
    let registry = RegistryClient::new(&env.settings.registry);
    let id = registry
        .version(&feedline_schemas::value_subject(&topic), "latest")
        .await
        .unwrap()
        .unwrap()
        .id;

    let raw: String = read_all(&topic, 1)
        .iter()
        .map(|m| format!("{}\n", BASE64.encode(m.payload().unwrap())))
        .collect();
    let decoded = python(PY_READ, &[SCHEMA], &raw).await;
    let decoded: Vec<Value> = decoded
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(decoded.len(), 2);
    for (got, sent) in decoded.iter().zip(&records) {
        assert_eq!(got["schema_id"], id);
        assert_eq!(&got["value"], sent);
    }
}
