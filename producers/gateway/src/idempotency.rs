//! `Idempotency-Key` on the command routes (the IETF httpapi draft, as payment APIs use it):
//! the same key from the same client within the expiry gets the same ids and the same answer.
//!
//! Two layers, because either alone falls short:
//! - The ids of a keyed request (order or customer id, the command's `event_id` and, unless
//!   the client sent one, its correlation id) are name-based UUIDs (v5) of the client, the
//!   request's method and path, and the key. A retry after a lost answer or a gateway crash
//!   reaches the services as the same command, and their `processed_events` (keyed by
//!   `event_id`) make it a no-op, on any replica and after any restart.
//! - [`Answers`], a bounded in-memory map key → (request fingerprint, answer), gives a retry
//!   on this process the first answer back without publishing again, and tells a different
//!   request under a used key (422) from a retry. Across processes the handlers compare
//!   with order-view instead, where it holds something to compare.
//!
//! A second request with a key whose first is still being answered gets 409 with
//! `Retry-After`, as the draft suggests, rather than waiting for the first: that wait could
//! itself outlast the client's timeout. Only successful answers are kept: an error means the
//! command was not accepted, and the retry must be able to succeed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::http::{HeaderMap, StatusCode, header};
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::time::Instant;
use uuid::Uuid;

use crate::error::ApiError;

pub const HEADER: &str = "Idempotency-Key";
const MAX_KEY: usize = 255;
/// What a client waits before retrying a key that is still being answered.
const IN_FLIGHT_RETRY_AFTER: &str = "1";

/// The namespace of every id derived from a key. Never change it: a retry across a gateway
/// upgrade must derive the ids its first request got.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f1d_3b0e_8c2a_4e57_9b1a_5d4c_7e2f_0a93);

/// Why a keyed request is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("Idempotency-Key must be sent at most once")]
    Repeated,
    #[error("Idempotency-Key must be 1 to {MAX_KEY} printable ASCII characters")]
    Malformed,
    #[error(
        "this Idempotency-Key was already used for a different request; send a new key with a new request"
    )]
    Reused,
    #[error("a request with this Idempotency-Key is still being answered; retry it shortly")]
    InFlight,
}

impl KeyError {
    pub fn label(self) -> &'static str {
        match self {
            KeyError::Repeated | KeyError::Malformed => "malformed",
            KeyError::Reused => "reused",
            KeyError::InFlight => "in_flight",
        }
    }
}

impl From<KeyError> for ApiError {
    fn from(error: KeyError) -> Self {
        match error {
            KeyError::Repeated | KeyError::Malformed => {
                ApiError::invalid_parameter(HEADER, error.to_string())
            }
            KeyError::Reused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                error.to_string(),
            )
            .field(HEADER),
            KeyError::InFlight => ApiError::new(
                StatusCode::CONFLICT,
                "idempotency_key_in_use",
                error.to_string(),
            )
            .field(HEADER)
            .header(header::RETRY_AFTER, IN_FLIGHT_RETRY_AFTER),
        }
    }
}

/// A valid `Idempotency-Key` value, not yet tied to its client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key(String);

impl Key {
    pub fn parse(text: &str) -> Result<Self, KeyError> {
        // The draft makes the value a structured-field string ("..."); clients following
        // Stripe send the bare text. Both name the same key.
        let key = text
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .unwrap_or(text);
        if key.is_empty() || key.len() > MAX_KEY || !key.bytes().all(|b| (b' '..=b'~').contains(&b))
        {
            return Err(KeyError::Malformed);
        }
        Ok(Key(key.to_owned()))
    }

    /// The key in `headers`, if the client sent one.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, KeyError> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(KeyError::Repeated);
        }
        let text = value.to_str().map_err(|_| KeyError::Malformed)?;
        Self::parse(text).map(Some)
    }

    pub fn of_client(self, client: &str) -> IdempotencyKey {
        IdempotencyKey {
            client: client.to_owned(),
            key: self.0,
        }
    }
}

/// A client's key: the same text from two clients is two keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey {
    client: String,
    key: String,
}

impl IdempotencyKey {
    /// The id `what` (`order_id`, `event_id`, ...) of the request `target` (method and
    /// path) sent with this key: the same on every gateway, in every process.
    ///
    /// When the key is itself a UUIDv7 (what feedline's clients send), the id is a UUIDv7
    /// with the key's time and the name's hash for its random bits: as repeatable as a v5,
    /// and as time-ordered as the unkeyed ids, so the indexes keyed by these ids keep taking
    /// appends (see the README's design decision on time-ordered ids).
    pub fn derive(&self, target: &str, what: &str) -> Uuid {
        // Lengths first, so that no choice of client id and key spells another's name.
        let name = format!(
            "{}:{target}{}:{}{}:{}{what}",
            target.len(),
            self.client.len(),
            self.client,
            self.key.len(),
            self.key,
        );
        let hashed = uuid_v5(&NAMESPACE, name.as_bytes());
        match Uuid::parse_str(&self.key)
            .ok()
            .filter(|k| k.get_version_num() == 7)
            .and_then(|k| k.get_timestamp())
        {
            Some(at) => {
                let (secs, nanos) = at.to_unix();
                let millis = secs * 1000 + u64::from(nanos / 1_000_000);
                let mut random = [0; 10];
                random.copy_from_slice(&hashed.as_bytes()[6..]);
                uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid()
            }
            None => hashed,
        }
    }
}

/// RFC 9562 §5.5. uuid's own `new_v5` needs a SHA-1 crate the workspace does not otherwise
/// build; this one is already in the lock file.
fn uuid_v5(namespace: &Uuid, name: &[u8]) -> Uuid {
    let digest = Sha1::new()
        .chain_update(namespace.as_bytes())
        .chain_update(name)
        .finalize();
    let mut bytes = [0; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// What a request asks for, whatever its JSON spelling: a retry must match its first
/// request, and a different request under the same key must not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// `target` is the method and path; `canonical` the validated body, one way of writing it.
    pub fn of(target: &str, canonical: &str) -> Self {
        Fingerprint(
            Sha256::new()
                .chain_update(target.len().to_le_bytes())
                .chain_update(target)
                .chain_update(canonical)
                .finalize()
                .into(),
        )
    }
}

/// The answers to keyed requests, kept for `ttl` and at most `capacity` of them (the oldest
/// go first). A key that left the map still derives its ids, so a late retry is still a
/// no-op at the services; only the answer is rebuilt.
#[derive(Debug)]
pub struct Answers<A> {
    inner: Mutex<Inner<A>>,
    ttl: Duration,
    capacity: usize,
}

#[derive(Debug)]
struct Inner<A> {
    entries: HashMap<IdempotencyKey, Entry<A>>,
    /// Answered keys in the order they expire (all live `ttl`), one per `Done` entry.
    expiry: VecDeque<(IdempotencyKey, Instant)>,
}

#[derive(Debug)]
enum Entry<A> {
    InFlight(Fingerprint),
    Done { fingerprint: Fingerprint, answer: A },
}

/// How a keyed request goes on.
#[derive(Debug)]
pub enum Begin<'a, A> {
    /// The first of its key: answer it, then [`Claim::complete`].
    First(Claim<'a, A>),
    /// A retry of an answered request: this is its answer.
    Replay(A),
}

impl<A: Clone> Answers<A> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Answers {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                expiry: VecDeque::new(),
            }),
            ttl,
            capacity,
        }
    }

    pub fn begin(
        &self,
        key: &IdempotencyKey,
        fingerprint: Fingerprint,
    ) -> Result<Begin<'_, A>, KeyError> {
        let mut inner = self.lock();
        inner.expire(Instant::now(), self.capacity);
        match inner.entries.get(key) {
            Some(Entry::Done {
                fingerprint: first,
                answer,
            }) if *first == fingerprint => Ok(Begin::Replay(answer.clone())),
            Some(Entry::InFlight(first)) if *first == fingerprint => Err(KeyError::InFlight),
            Some(_) => Err(KeyError::Reused),
            None => {
                inner
                    .entries
                    .insert(key.clone(), Entry::InFlight(fingerprint));
                Ok(Begin::First(Claim {
                    answers: self,
                    key: key.clone(),
                    fingerprint,
                    completed: false,
                }))
            }
        }
    }

    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<A> Answers<A> {
    fn lock(&self) -> MutexGuard<'_, Inner<A>> {
        // The critical sections only move entries: one that panicked left nothing half-done.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<A> Inner<A> {
    fn expire(&mut self, now: Instant, capacity: usize) {
        while let Some((_, expires)) = self.expiry.front() {
            if *expires > now && self.expiry.len() <= capacity {
                break;
            }
            if let Some((key, _)) = self.expiry.pop_front() {
                self.entries.remove(&key);
            }
        }
    }
}

/// The first request of a key, being answered. Dropped without [`Claim::complete`] (an
/// error, or the client went away) it frees the key for a retry.
#[derive(Debug)]
pub struct Claim<'a, A> {
    answers: &'a Answers<A>,
    key: IdempotencyKey,
    fingerprint: Fingerprint,
    completed: bool,
}

impl<A> Claim<'_, A> {
    pub fn complete(mut self, answer: A) {
        self.completed = true;
        let expires = Instant::now() + self.answers.ttl;
        let mut inner = self.answers.lock();
        inner.entries.insert(
            self.key.clone(),
            Entry::Done {
                fingerprint: self.fingerprint,
                answer,
            },
        );
        inner.expiry.push_back((self.key.clone(), expires));
        inner.expire(Instant::now(), self.answers.capacity);
    }
}

impl<A> Drop for Claim<'_, A> {
    fn drop(&mut self) {
        if !self.completed {
            self.answers.lock().entries.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn key(client: &str, key: &str) -> IdempotencyKey {
        Key::parse(key).unwrap().of_client(client)
    }

    #[test]
    fn v5_matches_the_rfc_example() {
        // RFC 9562 appendix A.4: the DNS namespace and "www.example.com".
        let dns = Uuid::parse_str("6ba7b810-9dad-11d1-80b4-00c04fd430c8").unwrap();
        assert_eq!(
            uuid_v5(&dns, b"www.example.com").to_string(),
            "2ed6657d-e927-568b-95e1-2665a8aea6a2"
        );
    }

    #[test]
    fn a_uuidv7_key_gives_time_ordered_ids_as_repeatable_as_any() {
        let early = Uuid::now_v7();
        std::thread::sleep(Duration::from_millis(2));
        let late = Uuid::now_v7();
        let derive = |key: Uuid| {
            Key::parse(&key.to_string())
                .unwrap()
                .of_client("demo")
                .derive("POST /orders", "order_id")
        };
        let (a, b) = (derive(early), derive(late));
        assert_eq!(a.get_version_num(), 7);
        assert_eq!(a, derive(early), "the same key, the same id");
        assert!(a < b, "ids follow the keys' time");
        assert_eq!(a.get_timestamp(), early.get_timestamp());
        let other = Key::parse(&early.to_string())
            .unwrap()
            .of_client("demo")
            .derive("POST /orders", "event_id");
        assert_ne!(a, other, "each purpose its own id");
    }

    #[test]
    fn ids_depend_on_client_key_request_and_purpose() {
        let a = key("demo", "k1");
        let id = a.derive("POST /orders", "order_id");
        assert_eq!(id, key("demo", "k1").derive("POST /orders", "order_id"));
        assert_eq!(id, key("demo", "\"k1\"").derive("POST /orders", "order_id"));
        assert_eq!(id.get_version_num(), 5);
        for other in [
            key("other", "k1").derive("POST /orders", "order_id"),
            key("demo", "k2").derive("POST /orders", "order_id"),
            a.derive("POST /customers", "order_id"),
            a.derive("POST /orders", "event_id"),
            // The lengths keep the parts apart.
            key("demo:", "1").derive("POST /orders", "order_id"),
        ] {
            assert_ne!(id, other);
        }
    }

    #[test]
    fn keys_are_printable_ascii_of_bounded_length() {
        for good in [
            "a",
            "8e03978e-40d5-43e8-bc93-6894a57f9324",
            "with space",
            &"x".repeat(255),
        ] {
            assert!(Key::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "\"\"", &"x".repeat(256), "tab\there", "é", "nul\0"] {
            assert_eq!(Key::parse(bad), Err(KeyError::Malformed), "{bad:?}");
        }
        let mut headers = HeaderMap::new();
        assert_eq!(Key::from_headers(&headers), Ok(None));
        headers.append(HEADER, HeaderValue::from_static("one"));
        assert_eq!(Key::from_headers(&headers), Ok(Some(Key("one".into()))));
        headers.append(HEADER, HeaderValue::from_static("two"));
        assert_eq!(Key::from_headers(&headers), Err(KeyError::Repeated));
        let error = ApiError::from(KeyError::Reused);
        assert_eq!(error.status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(error.field.as_deref(), Some(HEADER));
    }

    #[test]
    fn fingerprints_keep_target_and_body_apart() {
        let f = Fingerprint::of("POST /orders", "a b");
        assert_eq!(f, Fingerprint::of("POST /orders", "a b"));
        assert_ne!(f, Fingerprint::of("POST /orders", "a c"));
        assert_ne!(f, Fingerprint::of("POST /orders a", " b"));
    }

    #[tokio::test(start_paused = true)]
    async fn retries_replay_and_other_requests_are_refused() {
        let answers = Answers::new(Duration::from_secs(60), 10);
        let k = key("demo", "k");
        let f = Fingerprint::of("POST /orders", "1");
        let g = Fingerprint::of("POST /orders", "2");

        let Ok(Begin::First(claim)) = answers.begin(&k, f) else {
            panic!("first")
        };
        assert_eq!(answers.begin(&k, f).unwrap_err(), KeyError::InFlight);
        assert_eq!(answers.begin(&k, g).unwrap_err(), KeyError::Reused);
        claim.complete("answer");
        assert!(matches!(answers.begin(&k, f), Ok(Begin::Replay("answer"))));
        assert_eq!(answers.begin(&k, g).unwrap_err(), KeyError::Reused);
        assert!(matches!(
            answers.begin(&key("other", "k"), g),
            Ok(Begin::First(_))
        ));

        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(matches!(answers.begin(&k, g), Ok(Begin::First(_))));
    }

    #[test]
    fn an_unanswered_request_frees_its_key() {
        let answers: Answers<&str> = Answers::new(Duration::from_secs(60), 10);
        let k = key("demo", "k");
        let f = Fingerprint::of("POST /orders", "1");
        drop(answers.begin(&k, f).unwrap());
        assert!(answers.is_empty());
        assert!(matches!(answers.begin(&k, f), Ok(Begin::First(_))));
    }

    #[test]
    fn the_oldest_answers_go_first_beyond_capacity() {
        let answers = Answers::new(Duration::from_secs(60), 2);
        let f = Fingerprint::of("POST /orders", "1");
        for name in ["a", "b", "c"] {
            let Ok(Begin::First(claim)) = answers.begin(&key("demo", name), f) else {
                panic!("{name}")
            };
            claim.complete(name);
        }
        assert_eq!(answers.len(), 2);
        assert!(matches!(
            answers.begin(&key("demo", "a"), f),
            Ok(Begin::First(_))
        ));
        assert!(matches!(
            answers.begin(&key("demo", "c"), f),
            Ok(Begin::Replay("c"))
        ));
    }
}
