//! The relay's TLS identity: a self-signed certificate that clients pin by fingerprint.
//!
//! On first start [`load_or_create`] generates an ECDSA P-256 key and a self-signed certificate for
//! the configured names and writes them, DER-encoded, as `cert.der` and `key.der` (PKCS#8, mode
//! 0600 on unix) into the data directory; later starts load and check them. Each file is written
//! to a temporary file, synced and renamed into place, the key first: a crash leaves either no
//! certificate (a new identity is made on the next start, and nobody can have pinned the lost one)
//! or a complete pair.
//!
//! Clients do not use a CA: they pin the SHA-256 of the certificate ([`fingerprint`], printed by
//! the `fingerprint` command) and connect with [`pinned_client_config`]. The pin replaces name
//! and chain checks (and validity dates); the TLS 1.3 handshake signature is still verified
//! against the pinned certificate's key, so only the holder of `key.der` can answer. Only TLS 1.3
//! is offered or accepted on both sides.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

pub use hush_net::pin::{PinError, pinned_client_config};

/// File name of the certificate (DER) inside the data directory.
pub const CERT_FILE: &str = "cert.der";
/// File name of the private key (PKCS#8 DER) inside the data directory.
pub const KEY_FILE: &str = "key.der";

/// Largest certificate or key file that is read (both are a few hundred bytes).
const MAX_FILE_BYTES: u64 = 64 * 1024;

/// Errors of the TLS identity and configurations.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The failure.
        source: io::Error,
    },
    /// Generating the key or certificate failed (for example an invalid name).
    #[error("generating the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The stored certificate and key do not form a usable identity (damaged or tampered).
    #[error("{path}: invalid TLS identity: {reason}")]
    InvalidIdentity {
        /// The file that was found wanting.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A certificate exists but its key does not: a new identity would change the fingerprint
    /// clients pin, so the relay refuses to start instead of replacing it.
    #[error("{0} exists but its key file is missing; restore it or remove the certificate")]
    MissingKey(PathBuf),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The relay's certificate and private key.
///
/// Its `Debug` shows the certificate's fingerprint only, never the key.
pub struct Identity {
    /// The self-signed certificate.
    pub cert: CertificateDer<'static>,
    /// Its private key.
    pub key: PrivateKeyDer<'static>,
}

impl Identity {
    /// The certificate's fingerprint (see [`fingerprint`]).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.cert)
    }
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Self {
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint())
            .finish_non_exhaustive()
    }
}

/// Lowercase hex SHA-256 of the certificate's DER (64 characters): what clients pin.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hush_net::pin::fingerprint(cert)
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Loads the identity from `dir`, or creates it there (with a certificate for `names`) when no
/// certificate exists yet. `names` are used only on creation.
pub fn load_or_create(dir: &Path, names: &[String]) -> Result<Identity, TlsError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    let cert_exists = cert_path.try_exists().map_err(io_err(&cert_path))?;
    if cert_exists {
        if !key_path.try_exists().map_err(io_err(&key_path))? {
            return Err(TlsError::MissingKey(cert_path));
        }
        let id = Identity {
            cert: CertificateDer::from(read_bounded(&cert_path)?),
            key: PrivatePkcs8KeyDer::from(read_bounded(&key_path)?).into(),
        };
        check_pair(&id, &key_path)?;
        warn_if_shared(&key_path);
        tracing::info!(fingerprint = %id.fingerprint(), "loaded TLS identity");
        return Ok(id);
    }
    let id = generate(names)?;
    // Key first: a certificate on disk always has its key beside it.
    write_atomic(&key_path, id.key.secret_der(), true)?;
    write_atomic(&cert_path, id.cert.as_ref(), false)?;
    sync_dir(dir)?;
    tracing::info!(fingerprint = %id.fingerprint(), "created TLS identity");
    Ok(id)
}

fn generate(names: &[String]) -> Result<Identity, TlsError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, "hush relay");
    params.distinguished_name = dn;
    let cert = params.self_signed(&key)?;
    Ok(Identity {
        cert: cert.der().clone(),
        key: PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
    })
}

/// The key must parse and be the one whose public half the certificate carries.
fn check_pair(id: &Identity, key_path: &Path) -> Result<(), TlsError> {
    let invalid = |reason: String| TlsError::InvalidIdentity {
        path: key_path.to_path_buf(),
        reason,
    };
    let provider = rustls::crypto::ring::default_provider();
    let signing = provider
        .key_provider
        .load_private_key(id.key.clone_key())
        .map_err(|e| invalid(format!("key does not load: {e}")))?;
    rustls::sign::CertifiedKey::new(vec![id.cert.clone()], signing)
        .keys_match()
        .map_err(|e| invalid(format!("key does not match the certificate: {e}")))
}

fn read_bounded(path: &Path) -> Result<Vec<u8>, TlsError> {
    let file = File::open(path).map_err(io_err(path))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(io_err(path))?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(TlsError::InvalidIdentity {
            path: path.to_path_buf(),
            reason: "file is too large".into(),
        });
    }
    Ok(bytes)
}

#[cfg(unix)]
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(path = %path.display(), "TLS key file is readable by other users");
    }
}

#[cfg(not(unix))]
fn warn_if_shared(_path: &Path) {}

/// Writes `bytes` to `path` through a synced temporary file and a rename.
fn write_atomic(path: &Path, bytes: &[u8], private: bool) -> Result<(), TlsError> {
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(&tmp)(e)),
    }
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let written = opts.open(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(io_err(path)(e));
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), TlsError> {
    #[cfg(unix)]
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))?;
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// A server configuration presenting `id`: TLS 1.3 only, the one ALPN protocol `alpn`, no client
/// certificates (clients authenticate inside the connection).
pub fn server_config(id: &Identity, alpn: &[u8]) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(TLS13_ONLY)?
    .with_no_client_auth()
    .with_single_cert(vec![id.cert.clone()], id.key.clone_key())?;
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;

    const ALPN: &[u8] = b"hush/1";

    fn names() -> Vec<String> {
        vec!["localhost".into(), "relay.test".into()]
    }

    #[test]
    fn create_then_reload_keeps_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let a = load_or_create(dir.path(), &names()).unwrap();
        let fp = fingerprint(&a.cert);
        assert_eq!(fp.len(), 64);
        assert!(
            fp.chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
        );
        let b = load_or_create(dir.path(), &["other".into()]).unwrap();
        assert_eq!(fingerprint(&b.cert), fp);
        assert_eq!(b.key.secret_der(), a.key.secret_der());
        assert!(!dir.path().join("key.der.tmp").exists());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "key file is private");
        }
    }

    #[test]
    fn debug_does_not_show_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create(dir.path(), &names()).unwrap();
        let shown = format!("{id:?}");
        assert!(shown.contains(&id.fingerprint()));
        assert!(!shown.contains(&hex::encode(id.key.secret_der())));
        assert!(!shown.contains(&format!("{:?}", id.key.secret_der())));
    }

    #[test]
    fn tampered_key_is_a_typed_error() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path(), &names()).unwrap();
        let key_path = dir.path().join(KEY_FILE);
        let good = fs::read(&key_path).unwrap();
        // A flipped bit anywhere, and a key of another identity.
        for i in [10, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[i] ^= 0x01;
            fs::write(&key_path, &bad).unwrap();
            assert!(
                matches!(
                    load_or_create(dir.path(), &names()),
                    Err(TlsError::InvalidIdentity { .. })
                ),
                "flip at {i}"
            );
        }
        let other = tempfile::tempdir().unwrap();
        load_or_create(other.path(), &names()).unwrap();
        fs::copy(other.path().join(KEY_FILE), &key_path).unwrap();
        assert!(matches!(
            load_or_create(dir.path(), &names()),
            Err(TlsError::InvalidIdentity { .. })
        ));
        fs::write(&key_path, b"").unwrap();
        assert!(matches!(
            load_or_create(dir.path(), &names()),
            Err(TlsError::InvalidIdentity { .. })
        ));
        fs::remove_file(&key_path).unwrap();
        assert!(matches!(
            load_or_create(dir.path(), &names()),
            Err(TlsError::MissingKey(_))
        ));
    }

    /// Runs a handshake between the two configurations in memory.
    fn handshake(
        server: rustls::ServerConfig,
        client: rustls::ClientConfig,
    ) -> Result<(rustls::ClientConnection, rustls::ServerConnection), rustls::Error> {
        let name = ServerName::try_from("not-the-cert-name.invalid").unwrap();
        let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut s = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..20 {
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok((c, s));
            }
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn pinned_client_handshakes_and_a_wrong_pin_fails() {
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create(dir.path(), &names()).unwrap();
        let fp = id.fingerprint();

        let (c, s) = handshake(
            server_config(&id, ALPN).unwrap(),
            pinned_client_config(&fp.to_uppercase(), ALPN).unwrap(),
        )
        .unwrap();
        assert_eq!(c.alpn_protocol(), Some(ALPN));
        assert_eq!(s.alpn_protocol(), Some(ALPN));
        assert_eq!(c.protocol_version(), Some(rustls::ProtocolVersion::TLSv1_3));
        let seen = c.peer_certificates().unwrap();
        assert_eq!(fingerprint(&seen[0]), fp);

        let mut wrong = fp.into_bytes();
        wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
        let wrong = String::from_utf8(wrong).unwrap();
        let err = handshake(
            server_config(&id, ALPN).unwrap(),
            pinned_client_config(&wrong, ALPN).unwrap(),
        )
        .expect_err("a wrong pin must fail");
        assert!(
            matches!(err, rustls::Error::InvalidCertificate(_)),
            "{err:?}"
        );
    }

    #[test]
    fn a_certificate_with_another_key_fails_the_signature_check() {
        // Server presents the pinned certificate but signs with a different key: the handshake
        // signature check must reject it even though the pin matches.
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ida = load_or_create(a.path(), &names()).unwrap();
        let idb = load_or_create(b.path(), &names()).unwrap();
        let pin = ida.fingerprint();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let signing = provider.key_provider.load_private_key(idb.key).unwrap();
        let ck = Arc::new(rustls::sign::CertifiedKey::new(vec![ida.cert], signing));
        #[derive(Debug)]
        struct Fixed(Arc<rustls::sign::CertifiedKey>);
        impl rustls::server::ResolvesServerCert for Fixed {
            fn resolve(
                &self,
                _: rustls::server::ClientHello<'_>,
            ) -> Option<Arc<rustls::sign::CertifiedKey>> {
                Some(Arc::clone(&self.0))
            }
        }
        let mut server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(TLS13_ONLY)
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(Fixed(ck)));
        server.alpn_protocols = vec![ALPN.to_vec()];
        let err = handshake(server, pinned_client_config(&pin, ALPN).unwrap())
            .expect_err("a forged signature must fail");
        assert!(
            matches!(
                err,
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadSignature)
            ),
            "{err:?}"
        );
    }

    #[test]
    fn bad_pins_and_tls12_are_refused() {
        for pin in ["", "abc", &"g".repeat(64), &"a".repeat(66)] {
            assert!(matches!(
                pinned_client_config(pin, ALPN),
                Err(PinError::BadPin)
            ));
        }
        // A server that speaks only TLS 1.2 is refused, even with the right certificate.
        let dir = tempfile::tempdir().unwrap();
        let id = load_or_create(dir.path(), &names()).unwrap();
        let server = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![id.cert.clone()], id.key.clone_key())
        .unwrap();
        assert!(
            handshake(
                server,
                pinned_client_config(&id.fingerprint(), ALPN).unwrap()
            )
            .is_err()
        );
    }
}
