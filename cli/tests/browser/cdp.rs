//! A small Chrome DevTools Protocol client: headless Chromium started on a fresh profile,
//! one page attached over the browser's websocket (flat sessions), commands answered by
//! id, and every console error, uncaught exception and error log entry of the page kept so
//! a test can fail on them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// How long the browser may take to start and a page condition to come true.
const PATIENCE: Duration = Duration::from_secs(60);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Value, Value>>>>>;

/// The Chromium binary: `FEEDLINE_CHROMIUM`, else `chromium` (Debian's package) or
/// `chromium-browser` on the `PATH`.
pub fn find_chromium() -> Option<PathBuf> {
    if let Ok(path) = std::env::var("FEEDLINE_CHROMIUM") {
        return Some(PathBuf::from(path));
    }
    let dirs = std::env::var_os("PATH")?;
    std::env::split_paths(&dirs)
        .flat_map(|dir| [dir.join("chromium"), dir.join("chromium-browser")])
        .find(|path| path.is_file())
}

/// A headless Chromium with one page; killed (and its profile removed) when dropped.
pub struct Browser {
    child: tokio::process::Child,
    profile: PathBuf,
    outgoing: mpsc::UnboundedSender<Message>,
    pending: Pending,
    problems: Arc<Mutex<Vec<String>>>,
    next_id: AtomicU64,
    session: String,
}

impl Browser {
    /// Starts `chromium` with a `width`×`height` viewport and attaches to a blank page.
    pub async fn launch(chromium: &Path, width: u32, height: u32) -> Browser {
        let profile =
            std::env::temp_dir().join(format!("feedline-chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&profile).expect("create the browser profile");
        let log = std::fs::File::create(profile.join("chromium.log")).expect("browser log");
        let child = tokio::process::Command::new(chromium)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                // Containers give /dev/shm a few MiB; Chromium then crashes its renderers.
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--remote-debugging-port=0",
                &format!("--user-data-dir={}", profile.display()),
                &format!("--window-size={width},{height}"),
                "about:blank",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", chromium.display()));

        // Port 0 lets Chromium pick; it writes the port and the browser's websocket path
        // to DevToolsActivePort once it listens.
        let active = profile.join("DevToolsActivePort");
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let endpoint = loop {
            if let Ok(text) = std::fs::read_to_string(&active)
                && let Some((port, path)) = text.split_once('\n')
                && !path.trim().is_empty()
            {
                break format!("ws://127.0.0.1:{}{}", port.trim(), path.trim());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chromium wrote no DevToolsActivePort within {PATIENCE:?}: {}",
                std::fs::read_to_string(profile.join("chromium.log")).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(&endpoint)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {endpoint}: {e}"));
        let (mut sink, mut stream) = socket.split();
        let (outgoing, mut queue) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(message) = queue.recv().await {
                if sink.send(message).await.is_err() {
                    return;
                }
            }
        });
        let pending: Pending = Arc::default();
        let problems: Arc<Mutex<Vec<String>>> = Arc::default();
        {
            let pending = pending.clone();
            let problems = problems.clone();
            tokio::spawn(async move {
                while let Some(Ok(message)) = stream.next().await {
                    let Message::Text(text) = message else {
                        continue;
                    };
                    let Ok(value) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    dispatch(value, &pending, &problems);
                }
                // The browser went away: every command still waiting fails.
                pending.lock().unwrap().clear();
            });
        }
        let mut browser = Browser {
            child,
            profile,
            outgoing,
            pending,
            problems,
            next_id: AtomicU64::new(1),
            session: String::new(),
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"]
            .as_str()
            .expect("a session id")
            .to_owned();
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            browser.call(domain, json!({})).await;
        }
        browser
            .call(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await;
        browser
    }

    /// Sends one command (to the page once attached) and returns its result.
    pub async fn call(&self, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut command = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            command["sessionId"] = json!(self.session);
        }
        let (answer, answered) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, answer);
        self.outgoing
            .send(Message::Text(command.to_string().into()))
            .expect("the websocket writer runs");
        match tokio::time::timeout(PATIENCE, answered).await {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(error))) => panic!("{method} failed: {error}"),
            Ok(Err(_)) => panic!("the browser went away during {method}"),
            Err(_) => panic!("{method} got no answer within {PATIENCE:?}"),
        }
    }

    /// Opens `url` and waits until the document has loaded.
    pub async fn open(&self, url: &str) {
        let navigated = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(
            navigated.get("errorText").is_none(),
            "cannot open {url}: {navigated}"
        );
        self.wait_for("the page to load", "document.readyState === 'complete'")
            .await;
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&self, expression: &str) -> Value {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        if let Some(exception) = answer.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        answer["result"]["value"].clone()
    }

    /// Evaluates `expression` until it is truthy and returns that value; fails after
    /// [`PATIENCE`] naming `what` and any problem the page reported.
    pub async fn wait_for(&self, what: &str, expression: &str) -> Value {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let value = self.eval(expression).await;
            let truthy = match &value {
                Value::Null => false,
                Value::Bool(b) => *b,
                Value::String(s) => !s.is_empty(),
                Value::Number(n) => n.as_f64() != Some(0.0),
                _ => true,
            };
            if truthy {
                return value;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what} ({expression}); page problems: {:?}",
                self.problems()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Clicks the element with id `id`.
    pub async fn click(&self, id: &str) {
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.getElementById({id:?}); if (!e) return false; e.click(); return true; }})()"
            ))
            .await;
        assert_eq!(found, json!(true), "no element #{id} to click");
    }

    /// Sets the value of the input with id `id`, as typing would.
    pub async fn fill(&self, id: &str, value: &str) {
        let found = self
            .eval(&format!(
                "(() => {{ const e = document.getElementById({id:?}); if (!e) return false; e.value = {value:?}; e.dispatchEvent(new Event('input')); return true; }})()"
            ))
            .await;
        assert_eq!(found, json!(true), "no input #{id}");
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        let shot = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("image data"))
            .expect("base64 image")
    }

    /// Console errors, uncaught exceptions and error log entries so far.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// An answer to its command; an event that reports a problem to the list.
fn dispatch(message: Value, pending: &Pending, problems: &Mutex<Vec<String>>) {
    if let Some(id) = message["id"].as_u64() {
        if let Some(answer) = pending.lock().unwrap().remove(&id) {
            let result = match message.get("error") {
                Some(error) => Err(error.clone()),
                None => Ok(message["result"].clone()),
            };
            let _ = answer.send(result);
        }
        return;
    }
    if let Some(problem) = problem(&message) {
        problems.lock().unwrap().push(problem);
    }
}

/// What an event says went wrong in the page, if it is one of the three kinds a page
/// test fails on.
pub fn problem(event: &Value) -> Option<String> {
    let params = &event["params"];
    match event["method"].as_str()? {
        "Runtime.consoleAPICalled" if params["type"] == "error" => {
            let args: Vec<String> = params["args"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| {
                    a["value"]
                        .as_str()
                        .map(str::to_owned)
                        .or_else(|| a["description"].as_str().map(str::to_owned))
                        .unwrap_or_else(|| a["value"].to_string())
                })
                .collect();
            Some(format!("console.error: {}", args.join(" ")))
        }
        "Runtime.exceptionThrown" => {
            let details = &params["exceptionDetails"];
            let text = details["exception"]["description"]
                .as_str()
                .or_else(|| details["text"].as_str())
                .unwrap_or("?");
            Some(format!("uncaught exception: {text}"))
        }
        "Log.entryAdded" if params["entry"]["level"] == "error" => {
            let entry = &params["entry"];
            Some(format!(
                "log error ({}): {} {}",
                entry["source"].as_str().unwrap_or("?"),
                entry["text"].as_str().unwrap_or("?"),
                entry["url"].as_str().unwrap_or("")
            ))
        }
        _ => None,
    }
}
