//! VAPID (RFC 8292): the relay identifies itself to WebPush services with an ECDSA P-256 key.
//!
//! Every WebPush POST carries `Authorization: vapid t=<JWT>, k=<public key>`: `k` is the
//! relay's public key (an uncompressed point, base64url without padding) and `t` a JWT signed
//! with ES256 over `{"aud": <origin of the endpoint>, "exp": <now + 12 h>, "sub": <subject>}`
//! (`sub` only when the operator configured one). The key lives in a PKCS#8 file (mode 0600)
//! made on first start, like the relay's TLS key.

use std::fmt;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use zeroize::Zeroizing;

/// How far ahead of now a token expires (RFC 8292 §2: at most 24 hours).
pub const TOKEN_LIFETIME_SECS: u64 = 12 * 3600;

/// Largest key file read (a PKCS#8 P-256 key is 138 bytes).
const MAX_KEY_FILE: u64 = 16 * 1024;

/// JWS header of every token: `{"typ":"JWT","alg":"ES256"}`.
const JWT_HEADER: &str = r#"{"typ":"JWT","alg":"ES256"}"#;

/// Errors of the VAPID key.
#[derive(Debug, thiserror::Error)]
pub enum VapidError {
    /// Reading or writing the key file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// The file is not a PKCS#8 ECDSA P-256 key (or is too large).
    #[error("{0}: not a PKCS#8 ECDSA P-256 private key")]
    InvalidKey(PathBuf),
    /// Generating a key or signing a token failed.
    #[error("VAPID key operation failed")]
    Crypto,
}

/// The relay's VAPID key pair and subject.
///
/// `Debug` shows the public key and the subject, never the private key.
pub struct Vapid {
    key: EcdsaKeyPair,
    public: String,
    subject: Option<String>,
}

impl fmt::Debug for Vapid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Vapid")
            .field("public_key", &self.public)
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> VapidError + '_ {
    move |source| VapidError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl Vapid {
    /// Loads the key from `path`, or generates one and writes it there (PKCS#8 DER, mode 0600)
    /// when the file does not exist. `subject` (`mailto:` or `https:`) goes in every token as
    /// `sub`; an empty one is left out.
    pub fn load_or_create(path: &Path, subject: &str) -> Result<Vapid, VapidError> {
        let rng = SystemRandom::new();
        let pkcs8 = match std::fs::File::open(path) {
            Ok(file) => {
                let mut bytes = Zeroizing::new(Vec::new());
                file.take(MAX_KEY_FILE + 1)
                    .read_to_end(&mut bytes)
                    .map_err(io_err(path))?;
                if bytes.len() as u64 > MAX_KEY_FILE {
                    return Err(VapidError::InvalidKey(path.to_path_buf()));
                }
                warn_if_shared(path);
                bytes
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| VapidError::Crypto)?;
                let bytes = Zeroizing::new(doc.as_ref().to_vec());
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    hush_net::private_fs::create_dir(dir).map_err(io_err(dir))?;
                }
                hush_net::private_fs::write_atomic(path, &bytes).map_err(io_err(path))?;
                tracing::info!(path = %path.display(), "created VAPID key");
                bytes
            }
            Err(e) => return Err(io_err(path)(e)),
        };
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &rng)
            .map_err(|_| VapidError::InvalidKey(path.to_path_buf()))?;
        Ok(Vapid::from_key(key, subject))
    }

    fn from_key(key: EcdsaKeyPair, subject: &str) -> Vapid {
        let public = B64.encode(key.public_key().as_ref());
        let subject = Some(subject.trim().to_owned()).filter(|s| !s.is_empty());
        Vapid {
            key,
            public,
            subject,
        }
    }

    /// The public key as `k=` carries it: the uncompressed point, base64url without padding.
    /// This is the "application server key" a push service may ask the app for.
    pub fn public_key(&self) -> &str {
        &self.public
    }

    /// The public key itself: the uncompressed point, 65 bytes (what `PushServerKey` answers).
    pub fn public_key_bytes(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// The `Authorization` header value for a POST to an endpoint of origin `audience`
    /// (`https://host[:port]`), with a token that expires [`TOKEN_LIFETIME_SECS`] after
    /// `now_secs` (Unix time).
    pub fn authorization(&self, audience: &str, now_secs: u64) -> Result<String, VapidError> {
        let mut claims = serde_json::Map::new();
        claims.insert("aud".into(), audience.into());
        claims.insert(
            "exp".into(),
            now_secs.saturating_add(TOKEN_LIFETIME_SECS).into(),
        );
        if let Some(sub) = &self.subject {
            claims.insert("sub".into(), sub.as_str().into());
        }
        let claims = serde_json::to_vec(&serde_json::Value::Object(claims))
            .map_err(|_| VapidError::Crypto)?;
        let signing_input = format!("{}.{}", B64.encode(JWT_HEADER), B64.encode(claims));
        let signature = self
            .key
            .sign(&SystemRandom::new(), signing_input.as_bytes())
            .map_err(|_| VapidError::Crypto)?;
        Ok(format!(
            "vapid t={signing_input}.{}, k={}",
            B64.encode(signature.as_ref()),
            self.public
        ))
    }
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "VAPID key file is readable by other users");
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::signature::{ECDSA_P256_SHA256_FIXED, UnparsedPublicKey};

    #[test]
    fn the_key_is_made_once_privately_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/vapid.key");
        let a = Vapid::load_or_create(&path, "mailto:ops@relay.example").unwrap();
        let b = Vapid::load_or_create(&path, "").unwrap();
        assert_eq!(a.public_key(), b.public_key());
        assert_eq!(B64.decode(a.public_key()).unwrap().len(), 65);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o077, 0, "key file is private");
        }
        let shown = format!("{a:?}");
        let der = std::fs::read(&path).unwrap();
        assert!(!shown.contains(&format!("{:?}", &der[..])));
        assert!(shown.contains(a.public_key()));
    }

    #[test]
    fn a_damaged_key_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vapid.key");
        std::fs::write(&path, b"not a key").unwrap();
        assert!(matches!(
            Vapid::load_or_create(&path, ""),
            Err(VapidError::InvalidKey(_))
        ));
    }

    #[test]
    fn the_token_is_signed_for_the_audience_and_expires_within_a_day() {
        let dir = tempfile::tempdir().unwrap();
        let v = Vapid::load_or_create(&dir.path().join("v"), "mailto:ops@relay.example").unwrap();
        let header = v
            .authorization("https://push.example:8443", 1_000_000)
            .unwrap();
        let rest = header.strip_prefix("vapid t=").unwrap();
        let (token, k) = rest.split_once(", k=").unwrap();
        assert_eq!(k, v.public_key());
        let (input, sig) = token.rsplit_once('.').unwrap();
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, B64.decode(k).unwrap())
            .verify(input.as_bytes(), &B64.decode(sig).unwrap())
            .unwrap();
        let (head, claims) = input.split_once('.').unwrap();
        let head: serde_json::Value = serde_json::from_slice(&B64.decode(head).unwrap()).unwrap();
        assert_eq!(head["alg"], "ES256");
        assert_eq!(head["typ"], "JWT");
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(claims).unwrap()).unwrap();
        assert_eq!(claims["aud"], "https://push.example:8443");
        assert_eq!(claims["exp"], 1_000_000 + TOKEN_LIFETIME_SECS);
        assert_eq!(claims["sub"], "mailto:ops@relay.example");
        // Without a subject there is no `sub`.
        let bare = Vapid::load_or_create(&dir.path().join("v"), " ").unwrap();
        let header = bare.authorization("https://a.example", 5).unwrap();
        let token = header.strip_prefix("vapid t=").unwrap();
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&B64.decode(claims).unwrap()).unwrap();
        assert!(claims.get("sub").is_none());
    }
}
