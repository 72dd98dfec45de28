//! One file over 600 lines: the generators of one seeded case belong together (a split hides what a case is made of).
//! Random HTTP requests against a running service, for the gateway's and the registry's
//! fuzz tests: random methods, paths, query strings, headers, credentials and bodies, sent
//! concurrently over one keep-alive client, each answer held against a check.
//!
//! Every case is generated from the run's seed and its own index alone, so a failure is
//! reproduced by running again with the printed `FEEDLINE_FUZZ_SEED`, whatever the order in
//! which the concurrent requests happened to finish.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom as _;
use rand::{Rng, SeedableRng};
use reqwest::Method;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{Map, Value, json};

/// How many requests a run sends, and from which seed.
#[derive(Debug, Clone)]
pub struct FuzzConfig {
    /// What is fuzzed, for the output.
    pub service: String,
    pub seed: u64,
    pub cases: usize,
    pub concurrency: usize,
}

impl FuzzConfig {
    /// `FEEDLINE_FUZZ_SEED` (random when unset) and `FEEDLINE_FUZZ_CASES` (10,000 when
    /// unset). [`run`] prints the seed, so any run can be repeated.
    pub fn from_env(service: &str) -> Self {
        let seed = std::env::var("FEEDLINE_FUZZ_SEED")
            .ok()
            .map(|s| s.trim().parse().expect("FEEDLINE_FUZZ_SEED is a u64"))
            .unwrap_or_else(rand::random);
        let cases = std::env::var("FEEDLINE_FUZZ_CASES")
            .ok()
            .map(|s| s.trim().parse().expect("FEEDLINE_FUZZ_CASES is a count"))
            .unwrap_or(10_000);
        FuzzConfig {
            service: service.to_owned(),
            seed,
            cases,
            concurrency: 32,
        }
    }
}

/// A valid body for a route, the starting point of its mutations.
#[derive(Debug, Clone)]
pub enum Sample {
    None,
    Json(Value),
    Form(Vec<(String, String)>),
}

/// One route: its method, its path template (`/orders/{id}`), a valid body, and valid
/// values of its path parameters.
#[derive(Debug, Clone)]
pub struct Route {
    pub method: Method,
    pub path: String,
    pub sample: Sample,
    pub params: BTreeMap<String, Vec<String>>,
}

impl Route {
    pub fn new(method: Method, path: impl Into<String>) -> Self {
        Route {
            method,
            path: path.into(),
            sample: Sample::None,
            params: BTreeMap::new(),
        }
    }

    pub fn sample(mut self, sample: Sample) -> Self {
        self.sample = sample;
        self
    }

    pub fn param(mut self, name: &str, valid: &[&str]) -> Self {
        self.params.insert(
            name.to_owned(),
            valid.iter().map(|v| (*v).to_owned()).collect(),
        );
        self
    }

    fn name(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What a generated request looks like, kept to describe a failure.
#[derive(Debug, Clone)]
pub struct Case {
    pub index: usize,
    /// The route it was generated for (the request may use another method or path).
    pub route: String,
    pub method: Method,
    /// Path and query, as sent.
    pub target: String,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Case {
    /// A short description: request line, headers, and the start of the body.
    pub fn describe(&self) -> String {
        let mut out = format!("case {} ({}): {} ", self.index, self.route, self.method);
        out.push_str(&shorten(&self.target, 300));
        for (name, value) in &self.headers {
            let _ = write!(
                out,
                "\n  {name}: {}",
                shorten(&String::from_utf8_lossy(value.as_bytes()), 120)
            );
        }
        let _ = write!(
            out,
            "\n  body ({} bytes): {}",
            self.body.len(),
            shorten(&String::from_utf8_lossy(&self.body), 300)
        );
        out
    }
}

/// An answer: status, headers and, unless it is an event stream, its body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// `true` for `application/json` and `application/*+json`.
    pub fn is_json(&self) -> bool {
        let Some(value) = self.header("content-type") else {
            return false;
        };
        let essence = value.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
            || (essence.to_ascii_lowercase().starts_with("application/")
                && essence.to_ascii_lowercase().ends_with("+json"))
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The checks that hold for every service: no 5xx but a 503 with `Retry-After`, and
    /// every 4xx answered with a JSON body (HEAD answers carry no body).
    pub fn check_common(&self, case: &Case) -> Result<(), String> {
        if self.status >= 500 && !(self.status == 503 && self.header("retry-after").is_some()) {
            return Err(format!("server error {}", self.status));
        }
        if (400..500).contains(&self.status) && case.method != Method::HEAD {
            if !self.is_json() {
                return Err(format!(
                    "{} answered with content type {:?}",
                    self.status,
                    self.header("content-type")
                ));
            }
            if self.json().is_none() {
                return Err(format!(
                    "{} answered with a body that is not JSON",
                    self.status
                ));
            }
        }
        Ok(())
    }
}

/// What a run saw.
#[derive(Debug, Default)]
pub struct Report {
    pub sent: usize,
    /// Answers by status.
    pub statuses: BTreeMap<u16, usize>,
    /// Requests per route they were generated for.
    pub per_route: BTreeMap<String, usize>,
    /// Each failed check: why, the request, and the answer.
    pub failures: Vec<String>,
}

impl Report {
    /// Panics with every failure (the first ones in full) and the seed to repeat them.
    pub fn assert_clean(&self, config: &FuzzConfig) {
        println!(
            "sent {} requests; statuses {:?}; per route {:?}",
            self.sent, self.statuses, self.per_route
        );
        if self.failures.is_empty() {
            return;
        }
        let shown: Vec<&String> = self.failures.iter().take(10).collect();
        panic!(
            "{}: {} of {} requests failed (repeat with FEEDLINE_FUZZ_SEED={}); the first:\n{}",
            config.service,
            self.failures.len(),
            self.sent,
            config.seed,
            shown
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join("\n\n")
        );
    }
}

/// Credentials a request may carry, as `Authorization` header values or an `access_token`
/// query parameter.
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    /// Whole `Authorization` values: valid, expired, with the wrong scopes, ...
    pub authorization: Vec<String>,
    /// Tokens that may also travel as `?access_token=`.
    pub query_tokens: Vec<String>,
}

/// Sends `config.cases` requests, round-robin over `routes`, `config.concurrency` at a
/// time, and checks each answer with `check`. A request the server drops without an answer
/// is retried once (a keep-alive connection may close under it); dropped twice, it fails.
pub async fn run<F>(
    base_url: &str,
    routes: &[Route],
    credentials: &Credentials,
    config: &FuzzConfig,
    check: F,
) -> Report
where
    F: Fn(&Case, &Reply) -> Result<(), String> + Send + Sync,
{
    assert!(!routes.is_empty(), "no routes to fuzz");
    println!(
        "fuzzing {}: {} cases, FEEDLINE_FUZZ_SEED={}",
        config.service, config.cases, config.seed
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(config.concurrency)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http client");
    let check = Arc::new(check);
    let sent = Arc::new(AtomicUsize::new(0));
    let results: Vec<(Case, Result<Reply, String>)> = futures::stream::iter(0..config.cases)
        .map(|index| {
            let mut rng = StdRng::seed_from_u64(case_seed(config.seed, index));
            let route = &routes[index % routes.len()];
            let case = generate(&mut rng, index, route, routes, credentials);
            let http = http.clone();
            let fresh = fresh.clone();
            let sent = sent.clone();
            async move {
                sent.fetch_add(1, Ordering::Relaxed);
                let mut reply = send(&http, base_url, &case).await;
                if reply.is_err() {
                    // A server may close a kept-alive connection after any answer (one
                    // whose request body it did not read, say) while the pool hands the
                    // connection to the next request, or answer a huge request and close
                    // before it was all sent: HTTP clients retry on a new connection
                    // (RFC 9112 §9.3.1), and so does this one. A request no fresh
                    // connection gets an answer to is a failure.
                    reply = send(&fresh, base_url, &case).await;
                }
                (case, reply)
            }
        })
        .buffer_unordered(config.concurrency)
        .collect()
        .await;

    let mut report = Report {
        sent: sent.load(Ordering::Relaxed),
        ..Report::default()
    };
    for (case, reply) in results {
        *report.per_route.entry(case.route.clone()).or_default() += 1;
        match reply {
            Ok(reply) => {
                *report.statuses.entry(reply.status).or_default() += 1;
                if let Err(why) = reply
                    .check_common(&case)
                    .and_then(|()| check(&case, &reply))
                {
                    report.failures.push(format!(
                        "{why}\n{}\n  answer {} {:?}: {}",
                        case.describe(),
                        reply.status,
                        reply.header("content-type"),
                        shorten(&String::from_utf8_lossy(&reply.body), 300)
                    ));
                }
            }
            Err(why) => report
                .failures
                .push(format!("no answer: {why}\n{}", case.describe())),
        }
    }
    report
}

/// Each case's own seed: the run's seed and the index mixed (SplitMix64's finalizer), so
/// neighbouring cases do not start from neighbouring states.
fn case_seed(seed: u64, index: usize) -> u64 {
    let mut z = seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

async fn send(http: &reqwest::Client, base_url: &str, case: &Case) -> Result<Reply, String> {
    let url = format!("{base_url}{}", case.target);
    let response = http
        .request(case.method.clone(), &url)
        .headers(case.headers.clone())
        .body(case.body.clone())
        .send()
        .await
        .map_err(|e| format!("{e:?}"))?;
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let streaming = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    // An event stream does not end: its status and headers are the answer.
    let body = if streaming {
        Vec::new()
    } else {
        response
            .bytes()
            .await
            .map_err(|e| format!("reading the body: {e:?}"))?
            .to_vec()
    };
    Ok(Reply {
        status,
        headers,
        body,
    })
}

// ---- generation ----

const METHODS: &[&str] = &[
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "TRACE", "FEEDLINE",
];

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "APPLICATION/JSON",
    "application/merge-patch+json",
    "application/vnd.schemaregistry.v1+json",
    "application/x-www-form-urlencoded",
    "multipart/form-data; boundary=x",
    "text/plain",
    "text/html; charset=latin1",
    "application/octet-stream",
    "application/json; charset=\u{fffd}",
    "json",
    "/",
    ";;;",
    "",
];

const ACCEPTS: &[&str] = &[
    "*/*",
    "application/json",
    "text/event-stream",
    "application/vnd.schemaregistry.v1+json",
    "application/vnd.schemaregistry+json",
    "text/html",
    "image/png;q=0.1, */*;q=0",
    "",
];

/// Strings that tend to break parsers, paths and databases.
const NASTY: &[&str] = &[
    "",
    " ",
    "..",
    "../../../etc/passwd",
    "..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f",
    "%00",
    "%ff%fe",
    "%",
    "%zz",
    "null",
    "true",
    "-1",
    "0",
    "1e400",
    "18446744073709551616",
    "NaN",
    "00000000-0000-0000-0000-000000000000",
    "not-a-uuid",
    "' OR '1'='1",
    "<script>alert(1)</script>",
    "\u{0}",
    "\u{1b}[31m",
    "line\nbreak",
    "tab\there",
    "\u{202e}reversed",
    "\u{1f600}",
    "Ω≈ç√∫",
    "\u{feff}bom",
    "a/b",
    "a?b#c",
    "a&b=c",
    "latest",
];

fn pick<'a>(rng: &mut StdRng, items: &'a [&'a str]) -> &'a str {
    items.choose(rng).copied().unwrap_or("")
}

/// A string of random characters from a mix of ASCII, control characters and unicode.
fn random_string(rng: &mut StdRng, max: usize) -> String {
    let len = rng.random_range(0..=max);
    (0..len)
        .map(|_| match rng.random_range(0..10) {
            0 => char::from(rng.random_range(0u8..0x20)),
            1 => char::from_u32(rng.random_range(0x80..0x2FFF)).unwrap_or('?'),
            2 => char::from_u32(rng.random_range(0x1F300..0x1FAFF)).unwrap_or('?'),
            3 => *['"', '\\', '/', '%', '{', '}', '[', ']', '\u{7f}']
                .choose(rng)
                .unwrap_or(&'x'),
            _ => char::from(rng.random_range(0x20u8..0x7f)),
        })
        .collect()
}

/// A UUID from the case's generator (not the system's), so the case repeats with its seed.
fn random_uuid(rng: &mut StdRng) -> String {
    uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string()
}

fn random_bytes(rng: &mut StdRng, max: usize) -> Vec<u8> {
    let len = rng.random_range(0..=max);
    (0..len).map(|_| rng.random()).collect()
}

/// Percent-encodes every byte that is not unreserved, so the segment arrives as generated.
fn encode_all(text: &[u8]) -> String {
    let mut out = String::with_capacity(text.len() * 3);
    for byte in text {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(byte) {
            out.push(char::from(*byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

/// A value for a path parameter: valid, nasty, unicode, long, or raw percent-encoded bytes.
fn path_segment(rng: &mut StdRng, valid: &[String]) -> String {
    match rng.random_range(0..10) {
        0..=3 if !valid.is_empty() => encode_all(valid.choose(rng).expect("valid").as_bytes()),
        4 => pick(rng, NASTY).to_owned(),
        5 => encode_all(pick(rng, NASTY).as_bytes()),
        6 => encode_all(random_string(rng, 40).as_bytes()),
        7 => "a".repeat(rng.random_range(256..8_192)),
        8 => {
            let bytes = random_bytes(rng, 24);
            bytes.iter().fold(String::new(), |mut out, b| {
                let _ = write!(out, "%{b:02X}");
                out
            })
        }
        _ => random_uuid(rng),
    }
}

/// The path of `template`, its parameters filled in, sometimes bent out of shape.
fn path(rng: &mut StdRng, route: &Route) -> String {
    let mut out = String::new();
    let mut rest = route.path.as_str();
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let end = rest[start..]
            .find('}')
            .map_or(rest.len(), |e| start + e + 1);
        let name = rest[start + 1..end - 1].trim_start_matches('*');
        let valid = route.params.get(name).map(Vec::as_slice).unwrap_or(&[]);
        out.push_str(&path_segment(rng, valid));
        rest = &rest[end..];
    }
    out.push_str(rest);
    match rng.random_range(0..20) {
        0 => out.push('/'),
        1 => out = out.replacen('/', "//", 1),
        2 => {
            out.push('/');
            out.push_str(&path_segment(rng, &[]));
        }
        3 => out = out.to_uppercase(),
        _ => {}
    }
    out
}

fn query(rng: &mut StdRng, credentials: &Credentials) -> String {
    let count = match rng.random_range(0..3) {
        0 => 0,
        1 => 1,
        _ => rng.random_range(2..6),
    };
    let mut pairs = Vec::new();
    for _ in 0..count {
        let name = pick(
            rng,
            &[
                "wait",
                "access_token",
                "limit",
                "after",
                "before",
                "status",
                "customer",
                "customer_id",
                "deleted",
                "deletedOnly",
                "permanent",
                "subjectPrefix",
                "normalize",
                "verbose",
                "format",
                "offset",
                "",
                "%zz",
                "\u{1f600}",
            ],
        );
        let value = match rng.random_range(0..6) {
            0 if name == "access_token" && !credentials.query_tokens.is_empty() => credentials
                .query_tokens
                .choose(rng)
                .cloned()
                .unwrap_or_default(),
            0 | 1 => pick(
                rng,
                &["1", "5s", "500ms", "true", "false", "-5", "99999999999"],
            )
            .to_owned(),
            2 => pick(rng, NASTY).to_owned(),
            3 => random_string(rng, 30),
            4 => "9".repeat(rng.random_range(20..400)),
            _ => random_uuid(rng),
        };
        let raw = rng.random_bool(0.2);
        if raw {
            pairs.push(format!("{name}={value}"));
        } else {
            pairs.push(format!(
                "{}={}",
                encode_all(name.as_bytes()),
                encode_all(value.as_bytes())
            ));
        }
    }
    if pairs.is_empty() {
        String::new()
    } else {
        format!("?{}", pairs.join("&"))
    }
}

/// A header value from random bytes a header may carry (visible ASCII, space, tab and
/// obs-text), falling back to a plain one.
fn header_value(rng: &mut StdRng, max: usize) -> HeaderValue {
    let len = rng.random_range(0..=max);
    let bytes: Vec<u8> = (0..len)
        .map(|_| match rng.random_range(0..4) {
            0 => rng.random_range(0x80u8..=0xff),
            _ => rng.random_range(0x20u8..0x7f),
        })
        .collect();
    HeaderValue::from_bytes(&bytes).unwrap_or_else(|_| HeaderValue::from_static("x"))
}

fn headers(rng: &mut StdRng, route: &Route, credentials: &Credentials) -> HeaderMap {
    let mut headers = HeaderMap::new();
    let content_type = match (&route.sample, rng.random_range(0..10)) {
        (_, 0) => None,
        (_, 1) => Some(header_value(rng, 40)),
        (Sample::Form(_), 2..=6) => Some(HeaderValue::from_static(
            "application/x-www-form-urlencoded",
        )),
        (Sample::Json(_), 2..=6) => Some(HeaderValue::from_static("application/json")),
        _ => HeaderValue::from_str(pick(rng, CONTENT_TYPES)).ok(),
    };
    if let Some(value) = content_type {
        headers.insert("content-type", value);
    }
    if rng.random_bool(0.3)
        && let Ok(value) = HeaderValue::from_str(pick(rng, ACCEPTS))
    {
        headers.insert("accept", value);
    }
    let authorization = match rng.random_range(0..10) {
        0 | 1 => None,
        2 => Some(header_value(rng, 60)),
        3 => HeaderValue::from_str(&format!(
            "Bearer {}",
            pick(
                rng,
                &["", "x", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", "Bearer"]
            )
        ))
        .ok(),
        4 => HeaderValue::from_str(&format!("Basic {}", encode_all(&random_bytes(rng, 30)))).ok(),
        _ => credentials
            .authorization
            .choose(rng)
            .and_then(|v| HeaderValue::from_str(v).ok()),
    };
    if let Some(value) = authorization {
        headers.insert("authorization", value);
    }
    for _ in 0..rng.random_range(0..3) {
        let name = pick(
            rng,
            &[
                "idempotency-key",
                "prefer",
                "last-event-id",
                "x-correlation-id",
                "x-request-id",
                "x-forwarded-for",
                "if-none-match",
                "cache-control",
                "cookie",
                "origin",
                "x-feedline-junk",
            ],
        );
        let value = match (name, rng.random_range(0..4)) {
            ("prefer", 0) => HeaderValue::from_static("wait=1"),
            ("idempotency-key", 0) => HeaderValue::from_str(&random_uuid(rng)).expect("uuid"),
            (_, 1) => {
                HeaderValue::from_str(&"k".repeat(rng.random_range(200..4_000))).expect("ascii")
            }
            _ => header_value(rng, 80),
        };
        headers.append(HeaderName::from_static(name), value);
    }
    headers
}

/// A random JSON value of any type, `depth` levels deep at most.
fn random_json(rng: &mut StdRng, depth: u32) -> Value {
    match rng.random_range(0..if depth == 0 { 6 } else { 8 }) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => json!(rng.random::<i64>()),
        3 => json!(rng.random::<f64>() * 1e12 - 5e11),
        4 => Value::String(random_string(rng, 30)),
        5 => Value::String(pick(rng, NASTY).to_owned()),
        6 => Value::Array(
            (0..rng.random_range(0..4))
                .map(|_| random_json(rng, depth - 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..rng.random_range(0..4))
                .map(|_| (random_string(rng, 8), random_json(rng, depth - 1)))
                .collect(),
        ),
    }
}

/// `sample` with one change that keeps it JSON: a field dropped, retyped, swollen or added.
fn mutate_json(rng: &mut StdRng, sample: &Value) -> Value {
    let Value::Object(fields) = sample else {
        return random_json(rng, 3);
    };
    let mut fields: Map<String, Value> = fields.clone();
    let keys: Vec<String> = fields.keys().cloned().collect();
    let key = keys.choose(rng).cloned();
    match (rng.random_range(0..7), key) {
        (0, Some(key)) => {
            fields.remove(&key);
        }
        (1, Some(key)) => {
            fields.insert(key, random_json(rng, 2));
        }
        (2, Some(key)) => {
            fields.insert(key, Value::String(random_string(rng, 2_000)));
        }
        (3, Some(key)) => {
            fields.insert(key, Value::String(pick(rng, NASTY).to_owned()));
        }
        (4, Some(key)) => {
            let mut value = fields[&key].clone();
            if let Value::Object(inner) = &mut value {
                let inner_keys: Vec<String> = inner.keys().cloned().collect();
                if let Some(inner_key) = inner_keys.choose(rng) {
                    inner.insert(inner_key.clone(), random_json(rng, 1));
                }
            }
            if let Value::Array(items) = &mut value {
                items.push(random_json(rng, 2));
            }
            fields.insert(key, value);
        }
        (5, _) => {
            fields.insert(random_string(rng, 12), random_json(rng, 2));
        }
        _ => return Value::Object(Map::new()),
    }
    Value::Object(fields)
}

/// `depth` nested arrays or objects around a scalar.
fn deep(rng: &mut StdRng, depth: usize) -> Vec<u8> {
    let (open, close) = if rng.random_bool(0.5) {
        ("[", "]")
    } else {
        ("{\"a\":", "}")
    };
    let mut out = open.repeat(depth);
    out.push('1');
    out.push_str(&close.repeat(depth));
    out.into_bytes()
}

fn form(pairs: &[(String, String)]) -> Vec<u8> {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", encode_all(k.as_bytes()), encode_all(v.as_bytes())))
        .collect::<Vec<_>>()
        .join("&")
        .into_bytes()
}

fn body(rng: &mut StdRng, sample: &Sample) -> Vec<u8> {
    let valid = match sample {
        Sample::None => Vec::new(),
        Sample::Json(value) => serde_json::to_vec(value).expect("json"),
        Sample::Form(pairs) => form(pairs),
    };
    match rng.random_range(0..14) {
        0..=2 => valid,
        3..=5 => match sample {
            Sample::Form(pairs) => {
                let mut pairs = pairs.clone();
                if !pairs.is_empty() {
                    let at = rng.random_range(0..pairs.len());
                    match rng.random_range(0..3) {
                        0 => {
                            pairs.remove(at);
                        }
                        1 => pairs[at].1 = random_string(rng, 40),
                        _ => pairs.push(pairs[at].clone()),
                    }
                }
                form(&pairs)
            }
            Sample::Json(value) => serde_json::to_vec(&mutate_json(rng, value)).expect("json"),
            Sample::None => serde_json::to_vec(&random_json(rng, 3)).expect("json"),
        },
        6 => {
            let cut = rng.random_range(0..=valid.len());
            valid[..cut].to_vec()
        }
        7 => random_bytes(rng, 2_000),
        8 => {
            let depth = rng.random_range(100..20_000);
            deep(rng, depth)
        }
        9 => Vec::new(),
        10 => pick(
            rng,
            &[
                "[]",
                "\"x\"",
                "1",
                "null",
                "{}",
                "{\"a\":1,\"a\":2}",
                "\u{feff}{}",
            ],
        )
        .as_bytes()
        .to_vec(),
        11 => {
            // Past a body limit, or just below it.
            let len = *[60 * 1024, 70 * 1024, 300 * 1024]
                .choose(rng)
                .expect("size");
            let mut out = b"{\"x\":\"".to_vec();
            out.resize(len, b'a');
            out.extend_from_slice(b"\"}");
            out
        }
        12 => random_string(rng, 200).into_bytes(),
        _ => serde_json::to_vec(&random_json(rng, 4)).expect("json"),
    }
}

/// One random request aimed at `route`: mostly its own method and path shape, sometimes
/// another method, or the path of another route.
pub fn generate(
    rng: &mut StdRng,
    index: usize,
    route: &Route,
    routes: &[Route],
    credentials: &Credentials,
) -> Case {
    let method = match rng.random_range(0..10) {
        0 => Method::from_bytes(pick(rng, METHODS).as_bytes()).expect("method"),
        1 => routes.choose(rng).map_or(Method::GET, |r| r.method.clone()),
        _ => route.method.clone(),
    };
    let path = path(rng, route);
    let mut target = format!("{path}{}", query(rng, credentials));
    // A raw query the URL parser refuses would fail before it is sent: send the path alone.
    if reqwest::Url::parse(&format!("http://localhost{target}")).is_err() {
        target = path;
    }
    let headers = headers(rng, route, credentials);
    let body = if method == Method::GET && rng.random_bool(0.7) {
        Vec::new()
    } else {
        body(rng, &route.sample)
    };
    Case {
        index,
        route: route.name(),
        method,
        target,
        headers,
        body,
    }
}

fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.escape_debug().to_string();
    }
    let head: String = text.chars().take(max).collect();
    format!(
        "{}... ({} chars)",
        head.escape_debug(),
        text.chars().count()
    )
}

/// Counts panics on any thread of the test process from the moment it is installed: a
/// handler's panic only drops its connection, so the answer alone would not say it was one.
#[derive(Debug, Clone)]
pub struct PanicCounter(Arc<AtomicUsize>);

impl PanicCounter {
    pub fn install() -> Self {
        let count = Arc::new(AtomicUsize::new(0));
        let seen = count.clone();
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            seen.fetch_add(1, Ordering::SeqCst);
            previous(info);
        }));
        PanicCounter(count)
    }

    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(method: Method) -> Case {
        Case {
            index: 0,
            route: "GET /x".into(),
            method,
            target: "/x".into(),
            headers: HeaderMap::new(),
            body: Vec::new(),
        }
    }

    fn reply(status: u16, headers: &[(&'static str, &'static str)], body: &str) -> Reply {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::from_static(value));
        }
        Reply {
            status,
            headers: map,
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn the_common_checks_refuse_what_the_services_must_not_answer() {
        let get = case(Method::GET);
        let json = [("content-type", "application/json")];
        assert!(reply(200, &[], "hi").check_common(&get).is_ok());
        assert!(reply(400, &json, "{}").check_common(&get).is_ok());
        assert!(
            reply(503, &[("retry-after", "2")], "")
                .check_common(&get)
                .is_ok()
        );
        assert!(reply(500, &json, "{}").check_common(&get).is_err());
        assert!(reply(502, &json, "{}").check_common(&get).is_err());
        assert!(reply(503, &json, "{}").check_common(&get).is_err());
        assert!(
            reply(400, &[("content-type", "text/plain")], "bad")
                .check_common(&get)
                .is_err()
        );
        assert!(reply(422, &json, "not json").check_common(&get).is_err());
        let vnd = [("content-type", "application/vnd.schemaregistry.v1+json")];
        assert!(reply(404, &vnd, "{}").check_common(&get).is_ok());
        // A HEAD answer has no body to check.
        assert!(
            reply(405, &[], "")
                .check_common(&case(Method::HEAD))
                .is_ok()
        );
    }

    #[test]
    fn a_case_is_the_same_for_the_same_seed_and_index() {
        let routes = [Route::new(Method::POST, "/orders/{id}")
            .sample(Sample::Json(json!({"a": 1})))
            .param("id", &["x"])];
        let credentials = Credentials::default();
        let make = |seed, index| {
            let mut rng = StdRng::seed_from_u64(case_seed(seed, index));
            generate(&mut rng, index, &routes[0], &routes, &credentials)
        };
        for index in 0..200 {
            let (a, b) = (make(7, index), make(7, index));
            assert_eq!(
                (&a.method, &a.target, &a.headers, &a.body),
                (&b.method, &b.target, &b.headers, &b.body)
            );
        }
        assert_ne!(case_seed(7, 1), case_seed(7, 2));
        assert_ne!(case_seed(7, 1), case_seed(8, 1));
    }
}
