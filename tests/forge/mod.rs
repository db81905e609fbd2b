//! Forged tokens, key sets and a misbehaving JWKS server for the adversarial and fault tests; real signatures with the keys in tests/keys/.

#![allow(dead_code, reason = "each test crate uses a different part of the forge")]
#![expect(clippy::expect_used, clippy::indexing_slicing, reason = "test set-up: a failure to forge fails the test")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

pub const RSA: &str = "rsa-2048.pem";
pub const OTHER_RSA: &str = "rsa-2048-other.pem";
pub const EC: &str = "ec-p256.pem";
pub const ED: &str = "ed25519.pem";

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs()
}

fn pem(file: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/keys/{file}", env!("CARGO_MANIFEST_DIR"))).expect("test key")
}

pub fn encoding_key(file: &str, algorithm: Algorithm) -> EncodingKey {
    let bytes = pem(file);
    match algorithm {
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&bytes),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&bytes),
        _ => EncodingKey::from_rsa_pem(&bytes),
    }
    .expect("valid test key")
}

/// The public half of a test key as a JWK (with `alg` pinned), under `kid`.
pub fn public_jwk(file: &str, algorithm: Algorithm, kid: Option<&str>) -> Value {
    let mut jwk = Jwk::from_encoding_key(&encoding_key(file, algorithm), algorithm).expect("jwk");
    jwk.common.key_id = kid.map(str::to_string);
    serde_json::to_value(jwk).expect("json")
}

/// `{"keys": [...]}` as text.
pub fn jwks(keys: &[Value]) -> String {
    json!({ "keys": keys }).to_string()
}

/// A compact JWS of `claims`, signed with a test key, with `kid` in its header.
pub fn sign(file: &str, algorithm: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let mut header = Header::new(algorithm);
    header.kid = kid.map(str::to_string);
    jsonwebtoken::encode(&header, claims, &encoding_key(file, algorithm)).expect("signs")
}

/// A compact JWS of exactly these header and payload bytes (duplicate keys and all), signed
/// with a test key.
pub fn sign_raw(file: &str, algorithm: Algorithm, header_json: &str, payload_json: &str) -> String {
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header_json.as_bytes()),
        URL_SAFE_NO_PAD.encode(payload_json.as_bytes())
    );
    let signature =
        jsonwebtoken::crypto::sign(signing_input.as_bytes(), &encoding_key(file, algorithm), algorithm).expect("signs");
    format!("{signing_input}.{signature}")
}

/// What the fake JWKS endpoint does with the next request.
#[derive(Debug, Clone)]
pub enum Behavior {
    /// 200 with this body.
    Serve(String),
    /// This status, empty body.
    Status(u16),
    /// 302 to this location.
    Redirect(String),
    /// The body, one byte every `Duration`.
    Trickle(String, Duration),
    /// 200 with a body of this many bytes, written as fast as the peer reads.
    Huge(usize),
    /// The body, after a delay.
    Slow(String, Duration),
}

/// A loopback HTTP server for JWKS and discovery documents that records every path it is
/// asked for and the most bytes it managed to write on one connection. It stops when dropped.
pub struct FakeIdp {
    pub address: SocketAddr,
    behavior: Arc<Mutex<Behavior>>,
    paths: Arc<Mutex<Vec<String>>>,
    pub largest_answer: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    /// While true, every request is recorded and then held unanswered.
    held: Arc<AtomicBool>,
}

impl FakeIdp {
    pub fn start(behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let address = listener.local_addr().expect("address");
        let behavior = Arc::new(Mutex::new(behavior));
        let paths = Arc::new(Mutex::new(Vec::new()));
        let largest_answer = Arc::new(AtomicU64::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let (shared_behavior, shared_paths, shared_bytes, shared_stop, shared_held) =
            (behavior.clone(), paths.clone(), largest_answer.clone(), stop.clone(), held.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if shared_stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let (behavior, paths, bytes, stop, held) = (
                    shared_behavior.clone(),
                    shared_paths.clone(),
                    shared_bytes.clone(),
                    shared_stop.clone(),
                    shared_held.clone(),
                );
                std::thread::spawn(move || answer(stream, &behavior, &paths, &bytes, &stop, &held));
            }
        });
        Self { address, behavior, paths, largest_answer, stop, held }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    pub fn set(&self, behavior: Behavior) {
        *self.behavior.lock().expect("lock") = behavior;
    }

    /// Every request path so far, in order.
    pub fn paths(&self) -> Vec<String> {
        self.paths.lock().expect("lock").clone()
    }

    /// How many requests arrived so far, answered or held.
    pub fn requests(&self) -> usize {
        self.paths.lock().expect("lock").len()
    }

    /// From now on, requests are recorded but not answered until [`Self::release`].
    pub fn hold(&self) {
        self.held.store(true, Ordering::SeqCst);
    }

    /// Answers the held requests, and every later one, with the current behavior.
    pub fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
    }

    /// Waits until at least `count` requests arrived (hang guard: 20 s).
    pub fn wait_for_requests(&self, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.requests() < count {
            assert!(Instant::now() < deadline, "the IdP got {} requests, not {count}", self.requests());
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for FakeIdp {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.address, Duration::from_millis(200));
    }
}

fn answer(
    mut stream: TcpStream,
    behavior: &Mutex<Behavior>,
    paths: &Mutex<Vec<String>>,
    bytes: &AtomicU64,
    stop: &AtomicBool,
    held: &AtomicBool,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buffer = [0u8; 1024];
    while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < 64 * 1024 {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => head.extend_from_slice(&buffer[..read]),
        }
    }
    let text = String::from_utf8_lossy(&head);
    let Some(path) = text.split_whitespace().nth(1) else { return };
    paths.lock().expect("lock").push(path.to_string());
    while held.load(Ordering::SeqCst) && !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let behavior = behavior.lock().expect("lock").clone();
    let started = Instant::now();
    let mut written = 0u64;
    let mut send = |data: &[u8]| -> bool {
        if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(120) {
            return false;
        }
        let sent = stream.write_all(data).is_ok();
        if sent {
            written += data.len() as u64;
            bytes.fetch_max(written, Ordering::SeqCst);
        }
        sent
    };
    let head = |status: u16, length: usize| {
        format!(
            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {length}\r\nconnection: close\r\n\r\n"
        )
    };
    match behavior {
        Behavior::Serve(body) => {
            let _ = send(head(200, body.len()).as_bytes()) && send(body.as_bytes());
        }
        Behavior::Status(status) => {
            let _ = send(head(status, 0).as_bytes());
        }
        Behavior::Redirect(location) => {
            let response =
                format!("HTTP/1.1 302 Found\r\nlocation: {location}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
            let _ = send(response.as_bytes());
        }
        Behavior::Slow(body, delay) => {
            std::thread::sleep(delay);
            let _ = send(head(200, body.len()).as_bytes()) && send(body.as_bytes());
        }
        Behavior::Trickle(body, every) => {
            if send(head(200, body.len()).as_bytes()) {
                for byte in body.as_bytes() {
                    if !send(std::slice::from_ref(byte)) {
                        break;
                    }
                    std::thread::sleep(every);
                }
            }
        }
        Behavior::Huge(size) => {
            if send(head(200, size).as_bytes()) {
                let chunk = vec![b' '; 64 * 1024];
                let mut left = size;
                while left > 0 {
                    let part = left.min(chunk.len());
                    if !send(&chunk[..part]) {
                        break;
                    }
                    left -= part;
                }
            }
        }
    }
}

/// Claims of a token of `issuer` for `alice`, valid for ten minutes.
pub fn claims_of(issuer: &str) -> Value {
    json!({"iss": issuer, "sub": "alice", "exp": unix_now() + 600, "iat": unix_now()})
}

/// A RequestAuthentication in `namespace` with one remote rule per `(issuer, jwksUri)`, and an
/// ALLOW policy there that admits verified callers only.
pub fn remote_issuers_in(namespace: &str, rules: &[(&str, String)]) -> String {
    let mut yaml = format!(
        "apiVersion: security.istio.io/v1\nkind: RequestAuthentication\nmetadata: {{name: tokens, namespace: {namespace}}}\nspec:\n  jwtRules:\n"
    );
    for (issuer, uri) in rules {
        yaml.push_str(&format!("  - issuer: {issuer}\n    jwksUri: {uri}\n"));
    }
    yaml.push_str(&format!(
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: verified-only, namespace: {namespace}}}\nspec:\n  rules:\n  - from: [{{source: {{requestPrincipals: [\"*\"]}}}}]\n"
    ));
    yaml
}
