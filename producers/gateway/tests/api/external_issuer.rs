//! An external issuer: RS256 and ES256 tokens of an identity provider, verified with the key
//! set it publishes. The provider here is a locally generated RSA and P-256 key pair, and
//! its key set is served over HTTPS by a small axum server with a certificate from a
//! private CA made for the test (the gateway trusts it through `ca_location`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::{KeyPair as RsaKeyPair, KeySize};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair as _, RSA_PKCS1_SHA256,
};
use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use feedline::CancellationToken;
use feedline_gateway::jwt::Claims;
use feedline_testkit::{PATIENCE, eventually};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::helpers::{Options, TestApp, assert_accepted, assert_refused, read_orders};

const ISSUER: &str = "https://idp.example/realms/feedline";
const AUDIENCE: &str = "feedline";

/// An identity provider's signing keys, generated for the test.
struct Provider {
    rsa: RsaKeyPair,
    ec: EcdsaKeyPair,
}

impl Provider {
    fn generate() -> Provider {
        Provider {
            rsa: RsaKeyPair::generate(KeySize::Rsa2048).unwrap(),
            ec: EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap(),
        }
    }

    /// The public keys as a JWKS, under key ids `<prefix>rsa` and `<prefix>ec`.
    fn jwks(&self, prefix: &str) -> Vec<Value> {
        let b64 = |bytes: &[u8]| URL_SAFE_NO_PAD.encode(bytes);
        let rsa = self.rsa.public_key();
        let point = self.ec.public_key().as_ref();
        vec![
            json!({
                "kty": "RSA", "kid": format!("{prefix}rsa"), "use": "sig", "alg": "RS256",
                "n": b64(rsa.modulus().big_endian_without_leading_zero()),
                "e": b64(rsa.exponent().big_endian_without_leading_zero()),
            }),
            json!({
                "kty": "EC", "kid": format!("{prefix}ec"), "crv": "P-256",
                "x": b64(&point[1..33]), "y": b64(&point[33..65]),
            }),
        ]
    }

    fn rs256(&self, kid: &str, claims: &Claims) -> String {
        sign("RS256", kid, claims, |input| {
            let mut signature = vec![0; self.rsa.public_modulus_len()];
            self.rsa
                .sign(
                    &RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    input,
                    &mut signature,
                )
                .unwrap();
            signature
        })
    }

    fn es256(&self, kid: &str, claims: &Claims) -> String {
        sign("ES256", kid, claims, |input| {
            self.ec
                .sign(&SystemRandom::new(), input)
                .unwrap()
                .as_ref()
                .to_vec()
        })
    }
}

fn sign(alg: &str, kid: &str, claims: &Claims, signer: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let header = json!({"alg": alg, "typ": "JWT", "kid": kid});
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap())
    );
    let signature = signer(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
}

/// Claims as the provider issues them: its issuer, the gateway's audience at the provider.
fn provider_claims(scope: &str) -> Claims {
    let now = feedline_gateway::jwt::now();
    Claims {
        iss: ISSUER.into(),
        sub: "service-account-billing".into(),
        aud: vec!["account".into(), AUDIENCE.into()],
        iat: now,
        nbf: None,
        exp: now + 300,
        scope: scope.into(),
        jti: uuid::Uuid::new_v4().to_string(),
        // The company's identity provider names the tenant as the built-in issuer does.
        tenant: Some("billing".into()),
    }
}

/// What the key-set server serves, and how often it was asked.
#[derive(Default)]
struct JwksState {
    keys: Mutex<Vec<Value>>,
    failing: AtomicBool,
    fetches: AtomicUsize,
}

async fn serve_jwks(State(state): State<Arc<JwksState>>) -> Response {
    state.fetches.fetch_add(1, Ordering::SeqCst);
    if state.failing.load(Ordering::SeqCst) {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let keys = state.keys.lock().unwrap().clone();
    axum::Json(json!({ "keys": keys })).into_response()
}

/// A private CA, and a certificate it signed for 127.0.0.1: the CA's PEM file and the
/// server's TLS configuration.
fn private_ca() -> (PathBuf, Arc<ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "feedline test CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let ca_path = std::env::temp_dir().join(format!(
        "feedline-jwks-ca-{}.pem",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    (ca_path, Arc::new(config))
}

/// TLS connections for `axum::serve`; a failed handshake is dropped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// The provider's key-set endpoint over HTTPS; stopped when `stop` is cancelled.
struct JwksServer {
    url: String,
    ca: PathBuf,
    state: Arc<JwksState>,
    stop: CancellationToken,
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_file(&self.ca);
    }
}

impl JwksServer {
    async fn start(keys: Vec<Value>) -> JwksServer {
        let (ca, tls) = private_ca();
        let state = Arc::new(JwksState::default());
        *state.keys.lock().unwrap() = keys;
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!(
            "https://{}/realms/feedline/certs",
            tcp.local_addr().unwrap()
        );
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(tls),
        };
        let router = Router::new()
            .route("/realms/feedline/certs", get(serve_jwks))
            .with_state(state.clone());
        let stop = CancellationToken::new();
        let until = stop.clone();
        tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { until.cancelled().await })
                .await
        });
        JwksServer {
            url,
            ca,
            state,
            stop,
        }
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn options(&self, refresh_secs: u64) -> Options {
        Options {
            extra_toml: format!(
                "[gateway.external_issuer]\njwks_url = \"{}\"\nissuer = \"{ISSUER}\"\naudience = \"{AUDIENCE}\"\nrefresh_secs = {refresh_secs}\nca_location = \"{}\"\n",
                self.url,
                self.ca.display()
            ),
            ..Options::default()
        }
    }
}

#[tokio::test]
async fn external_rs256_and_es256_tokens_are_accepted_with_their_scopes() {
    let provider = Provider::generate();
    let jwks = JwksServer::start(provider.jwks("k1-")).await;
    let app = TestApp::spawn_with(jwks.options(300)).await;
    assert_eq!(jwks.fetches(), 1, "fetched once at start");

    let rs = provider.rs256("k1-rsa", &provider_claims("feed:read profile"));
    assert_accepted(&read_orders(&app, &rs).await);
    let es = provider.es256("k1-ec", &provider_claims("email feed:read"));
    assert_accepted(&read_orders(&app, &es).await);

    // The scope claim decides, as for the gateway's own tokens.
    let no_scope = provider.rs256("k1-rsa", &provider_claims("profile email"));
    read_orders(&app, &no_scope)
        .await
        .assert_error(403, "insufficient_scope", None);

    // The gateway's own tokens still work beside them.
    let own = app.token(Some("feed:read")).await;
    assert_accepted(&read_orders(&app, &own).await);
    assert_eq!(jwks.fetches(), 1, "the cached set served every request");
    app.stop().await;
}

#[tokio::test]
async fn forged_and_foreign_external_tokens_are_refused() {
    let provider = Provider::generate();
    let jwks = JwksServer::start(provider.jwks("k1-")).await;
    let app = TestApp::spawn_with(jwks.options(300)).await;

    // Another key pair claiming the provider's key ids.
    let forger = Provider::generate();
    let claims = provider_claims("feed:read");
    assert_refused(
        &read_orders(&app, &forger.rs256("k1-rsa", &claims)).await,
        "signature",
    );
    assert_refused(
        &read_orders(&app, &forger.es256("k1-ec", &claims)).await,
        "signature",
    );
    // The right key under the other algorithm's key id.
    assert_refused(
        &read_orders(&app, &provider.rs256("k1-ec", &claims)).await,
        "signature",
    );
    // A good signature over someone else's claims.
    let token = provider.rs256("k1-rsa", &claims);
    let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
    let mut wider = claims.clone();
    wider.scope = "feed:read orders:write customers:write".into();
    parts[1] = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&wider).unwrap());
    assert_refused(&read_orders(&app, &parts.join(".")).await, "signature");

    // Genuine signatures, wrong claims: the gateway's issuer and audience are not the
    // provider's, and the window is checked.
    let mut gateway_issued = claims.clone();
    gateway_issued.iss = "feedline-gateway".into();
    gateway_issued.aud = vec!["feedline-api".into()];
    assert_refused(
        &read_orders(&app, &provider.es256("k1-ec", &gateway_issued)).await,
        "issuer",
    );
    let mut other_audience = claims.clone();
    other_audience.aud = vec!["account".into()];
    assert_refused(
        &read_orders(&app, &provider.rs256("k1-rsa", &other_audience)).await,
        "not meant for this API",
    );
    let mut expired = claims.clone();
    expired.exp = feedline_gateway::jwt::now() - 120;
    assert_refused(
        &read_orders(&app, &provider.rs256("k1-rsa", &expired)).await,
        "expired",
    );
    let mut early = claims.clone();
    early.nbf = Some(feedline_gateway::jwt::now() + 600);
    assert_refused(
        &read_orders(&app, &provider.es256("k1-ec", &early)).await,
        "not valid yet",
    );

    // Unknown key ids: refused, and a stream of them does not hammer the provider.
    for i in 0..20 {
        let unknown = provider.rs256(&format!("made-up-{i}"), &claims);
        assert_refused(
            &read_orders(&app, &unknown).await,
            "key this gateway does not know",
        );
    }
    assert_eq!(jwks.fetches(), 1, "refetches are rate-limited");
    app.stop().await;
}

#[tokio::test]
async fn a_key_the_provider_adds_is_fetched_when_a_token_names_it() {
    let provider = Provider::generate();
    let jwks = JwksServer::start(provider.jwks("k1-")).await;
    let app = TestApp::spawn_with(jwks.options(300)).await;

    // The provider rotates: a new key pair, published beside the old one.
    let rotated = Provider::generate();
    jwks.state.keys.lock().unwrap().extend(rotated.jwks("k2-"));
    let token = rotated.es256("k2-ec", &provider_claims("feed:read"));
    // Refused until the rate limit allows a refetch, then accepted without a restart.
    eventually("the new key to be fetched", PATIENCE, async || {
        (read_orders(&app, &token).await.status == 503).then_some(())
    })
    .await;
    assert_eq!(
        jwks.fetches(),
        2,
        "one fetch at start, one for the new key, whatever the number of requests"
    );
    let old = provider.rs256("k1-rsa", &provider_claims("feed:read"));
    assert_accepted(&read_orders(&app, &old).await);
    app.stop().await;
}

#[tokio::test]
async fn the_cached_key_set_serves_while_the_provider_fails() {
    let provider = Provider::generate();
    let jwks = JwksServer::start(provider.jwks("k1-")).await;
    // Refreshed in the background every second, or as often as the fetch rate limit allows.
    let app = TestApp::spawn_with(jwks.options(1)).await;
    let token = provider.rs256("k1-rsa", &provider_claims("feed:read"));
    assert_accepted(&read_orders(&app, &token).await);

    jwks.state.failing.store(true, Ordering::SeqCst);
    let before = jwks.fetches();
    eventually("a failed refetch", PATIENCE, async || {
        assert_accepted(&read_orders(&app, &token).await);
        (jwks.fetches() > before).then_some(())
    })
    .await;
    // The failure was answered with the cached set.
    assert_accepted(&read_orders(&app, &token).await);
    app.stop().await;
}

#[tokio::test]
async fn the_key_set_is_not_fetched_from_an_untrusted_server() {
    let provider = Provider::generate();
    let jwks = JwksServer::start(provider.jwks("k1-")).await;
    let mut options = jwks.options(300);
    // Without the private CA the server's certificate is not trusted: no keys, and the
    // gateway still starts and serves its own tokens.
    options.extra_toml = options
        .extra_toml
        .lines()
        .filter(|line| !line.starts_with("ca_location"))
        .collect::<Vec<_>>()
        .join("\n");
    let app = TestApp::spawn_with(options).await;
    let token = provider.rs256("k1-rsa", &provider_claims("feed:read"));
    assert_refused(
        &read_orders(&app, &token).await,
        "key this gateway does not know",
    );
    let own = app.token(Some("feed:read")).await;
    assert_accepted(&read_orders(&app, &own).await);
    app.stop().await;
}
