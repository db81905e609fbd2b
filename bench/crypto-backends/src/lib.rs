//! jsonwebtoken's crypto backends, each reached through its own `CryptoProvider`: the verification portcullis does, with the backend picked per call.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::crypto::{CryptoProvider, aws_lc, rust_crypto};
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::json;

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The backends compared, by jsonwebtoken's feature names.
pub const BACKENDS: [(&str, &CryptoProvider); 2] =
    [("aws_lc_rs", &aws_lc::DEFAULT_PROVIDER), ("rust_crypto", &rust_crypto::DEFAULT_PROVIDER)];

/// A signed token split for verification, and its key built the way portcullis builds keys
/// from a JWKS (`DecodingKey::from_jwk`).
pub struct SignedToken {
    pub algorithm: Algorithm,
    key: DecodingKey,
    signing_input: Vec<u8>,
    signature: Vec<u8>,
}

fn test_key(name: &str) -> Result<Vec<u8>, Error> {
    Ok(std::fs::read(format!("{}/../../tests/keys/{name}", env!("CARGO_MANIFEST_DIR")))?)
}

impl SignedToken {
    /// A Keycloak-sized token signed with the test key for `algorithm` (RS256 or ES256).
    pub fn new(algorithm: Algorithm) -> Result<Self, Error> {
        // Signing and JWK export use the process default; verification picks its backend below.
        let _ = CryptoProvider::install_default(&aws_lc::DEFAULT_PROVIDER);
        let encoding_key = match algorithm {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&test_key("rsa-2048.pem")?)?,
            Algorithm::ES256 => EncodingKey::from_ec_pem(&test_key("ec-p256.pem")?)?,
            other => return Err(format!("{other:?} is not compared").into()),
        };
        let key = DecodingKey::from_jwk(&Jwk::from_encoding_key(&encoding_key, algorithm)?)?;
        let claims = json!({
            "exp": 4_102_444_800u64, "iat": 1_800_000_000u64, "jti": "5f2c1a9e-0b7d-4c3e-9a61-000000000001",
            "iss": "https://keycloak.bench.example/realms/jobs", "aud": ["jobs-api", "account"],
            "sub": "8d6f2b4a-3c1e-4f7a-b5d9-000000000001", "typ": "Bearer", "azp": "jobs-web",
            "realm_access": {"roles": ["offline_access", "uma_authorization", "default-roles-jobs", "admin"]},
            "resource_access": {"account": {"roles": ["manage-account", "manage-account-links", "view-profile"]}},
            "scope": "openid profile email", "email_verified": true, "name": "Bench User 1",
            "preferred_username": "user1", "given_name": "Bench", "family_name": "User 1",
            "email": "user1@jobs.example.com",
        });
        let token = jsonwebtoken::encode(&Header::new(algorithm), &claims, &encoding_key)?;
        let (signing_input, signature) = token.rsplit_once('.').ok_or("a compact JWS")?;
        let signature = URL_SAFE_NO_PAD.decode(signature)?;
        Ok(Self { algorithm, key, signing_input: signing_input.as_bytes().to_vec(), signature })
    }

    /// Verifies the signature with `provider`, as `jsonwebtoken::crypto::verify` (what
    /// portcullis calls) does with the process default: a verifier per call, then `verify`.
    pub fn verify_with(&self, provider: &CryptoProvider) -> bool {
        (provider.verifier_factory)(&self.algorithm, &self.key)
            .is_ok_and(|verifier| verifier.verify(&self.signing_input, &self.signature).is_ok())
    }
}
