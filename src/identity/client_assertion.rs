//! `private_key_jwt` client authentication (RFC 7523 section 2.2, OpenID Connect Core section 9): the private key read from a PEM file once, and a fresh signed client assertion per call; the key never reaches a log line or an error.

use std::fmt;
use std::path::Path;

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;

/// The `client_assertion_type` of a JWT client assertion (RFC 7523 section 2.2).
pub const ASSERTION_TYPE: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid: enough for one call, too short to be worth replaying.
const ASSERTION_LIFETIME_SECS: u64 = 60;

/// A client's private key and the `kid` its assertions name; `Debug` shows the algorithm only.
#[derive(Clone)]
pub struct AssertionKey {
    key: EncodingKey,
    algorithm: Algorithm,
    kid: Option<String>,
}

impl fmt::Debug for AssertionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AssertionKey").field("algorithm", &self.algorithm).field("kid", &self.kid).finish()
    }
}

/// The claims of a client assertion.
#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    sub: &'a str,
    aud: &'a str,
    jti: String,
    iat: u64,
    exp: u64,
}

impl AssertionKey {
    /// The private key in the PEM file `file`: an RSA key signs RS256, a P-256 key ES256. The
    /// error names the file and what is wrong, never the key.
    pub fn read(file: &Path, kid: Option<String>) -> Result<Self, String> {
        let pem = std::fs::read(file).map_err(|error| format!("cannot read `{}`: {error}", file.display()))?;
        let candidates =
            [(Algorithm::RS256, EncodingKey::from_rsa_pem(&pem)), (Algorithm::ES256, EncodingKey::from_ec_pem(&pem))];
        // A key of the other type may parse, and only fail to sign: each is tried on a probe.
        candidates
            .into_iter()
            .filter_map(|(algorithm, key)| Some(Self { key: key.ok()?, algorithm, kid: kid.clone() }))
            .find(|key| key.sign("probe", "probe", 0).is_ok())
            .ok_or_else(|| format!("`{}` holds no RSA or P-256 private key in PEM", file.display()))
    }

    /// The algorithm the key signs with: `RS256` or `ES256`.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// A client assertion of `client_id` for `audience` at `now` (seconds since the epoch):
    /// `iss` and `sub` the client, a random `jti`, valid for a minute.
    pub fn sign(&self, client_id: &str, audience: &str, now: u64) -> Result<String, String> {
        let mut nonce = [0_u8; 18];
        SystemRandom::new().fill(&mut nonce).map_err(|_| "no randomness for the assertion's jti".to_string())?;
        let claims = AssertionClaims {
            iss: client_id,
            sub: client_id,
            aud: audience,
            jti: URL_SAFE_NO_PAD.encode(nonce),
            iat: now,
            exp: now.saturating_add(ASSERTION_LIFETIME_SECS),
        };
        let header = Header { kid: self.kid.clone(), ..Header::new(self.algorithm) };
        jsonwebtoken::encode(&header, &claims, &self.key).map_err(|error| format!("cannot sign the assertion: {error}"))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;

    use super::*;

    fn key_file(name: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/keys").join(name)
    }

    #[test]
    fn an_rsa_key_signs_rs256_and_a_p256_key_es256() {
        assert_eq!(AssertionKey::read(&key_file("rsa-2048.pem"), None).unwrap().algorithm(), Algorithm::RS256);
        assert_eq!(AssertionKey::read(&key_file("ec-p256.pem"), None).unwrap().algorithm(), Algorithm::ES256);
    }

    #[test]
    fn a_file_without_a_usable_private_key_is_refused_naming_the_file_and_never_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let not_pem = dir.path().join("not-a-key.pem");
        std::fs::write(&not_pem, "hunter2-not-a-key").unwrap();
        let rows = [
            (not_pem, "holds no RSA or P-256 private key"),
            (key_file("ed25519.pem"), "holds no RSA or P-256 private key"),
            (dir.path().join("missing.pem"), "cannot read"),
        ];
        for (file, expected) in rows {
            let error = AssertionKey::read(&file, None).unwrap_err();
            assert!(error.contains(expected) && error.contains(&*file.to_string_lossy()), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
    }

    /// The public point of the P-256 key in `file` (PKCS#8 PEM).
    fn ec_public_key(file: &Path) -> DecodingKey {
        let pem = std::fs::read_to_string(file).unwrap();
        let body: String = pem.lines().filter(|line| !line.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &der).unwrap();
        DecodingKey::from_ec_der(pair.public_key().as_ref())
    }

    #[test]
    fn an_assertion_names_the_client_the_audience_and_a_fresh_jti_and_verifies_with_the_public_key() {
        let key = AssertionKey::read(&key_file("ec-p256.pem"), Some("k1".into())).unwrap();
        assert!(!format!("{key:?}").contains("PRIVATE"), "{key:?}");
        let now = 1_800_000_000;
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&["https://idp.example"]);
        validation.validate_exp = false;
        let public = ec_public_key(&key_file("ec-p256.pem"));
        let [first, second] = [(); 2].map(|()| {
            let assertion = key.sign("portcullis", "https://idp.example", now).unwrap();
            let header = jsonwebtoken::decode_header(&assertion).unwrap();
            assert_eq!((header.alg, header.kid.as_deref()), (Algorithm::ES256, Some("k1")));
            jsonwebtoken::decode::<Value>(&assertion, &public, &validation).unwrap().claims
        });
        assert_eq!((first["iss"].as_str(), first["sub"].as_str()), (Some("portcullis"), Some("portcullis")));
        assert_eq!((first["iat"].as_u64(), first["exp"].as_u64()), (Some(now), Some(now + 60)));
        assert_ne!(first["jti"], second["jti"], "each assertion is new");
    }
}
