//! Pinning the relay's certificate: clients accept exactly the certificate whose SHA-256 they
//! were given (printed by the relay), instead of a CA chain. The pin replaces name and chain
//! checks (and validity dates); the TLS 1.3 handshake signature is still verified against the
//! pinned certificate's key, so only the holder of the relay's key can answer. TLS 1.3 only.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Why a pinned configuration could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    /// A pin that is not 64 hex digits.
    #[error("a certificate pin is 64 hex digits (the SHA-256 of the certificate)")]
    BadPin,
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Only TLS 1.3.
static TLS13_ONLY: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The fingerprint clients pin: lowercase hex SHA-256 of the certificate's DER encoding.
pub fn fingerprint(cert: &CertificateDer<'_>) -> String {
    hex::encode(Sha256::digest(cert.as_ref()))
}

/// A client configuration that accepts exactly the relay certificate whose SHA-256 is `pin_hex`
/// (64 hex digits, either case), whatever server name is used: TLS 1.3 only, ALPN `alpn`.
pub fn pinned_client_config(pin_hex: &str, alpn: &[u8]) -> Result<rustls::ClientConfig, PinError> {
    let pin = parse_pin(pin_hex)?;
    let provider = rustls::crypto::ring::default_provider();
    let verifier = PinnedVerifier {
        pin,
        algorithms: provider.signature_verification_algorithms,
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(TLS13_ONLY)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(config)
}

fn parse_pin(pin_hex: &str) -> Result<[u8; 32], PinError> {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(pin_hex.trim(), &mut pin).map_err(|_| PinError::BadPin)?;
    Ok(pin)
}

/// The certificate does not have the pinned fingerprint.
#[derive(Debug, thiserror::Error)]
#[error("the relay's certificate does not match the pinned fingerprint")]
struct PinMismatch;

/// Accepts only the pinned certificate; checks TLS 1.3 handshake signatures with its key.
struct PinnedVerifier {
    pin: [u8; 32],
    algorithms: WebPkiSupportedAlgorithms,
}

impl PinnedVerifier {
    fn matches(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let digest = Sha256::digest(cert.as_ref());
        if bool::from(digest.as_slice().ct_eq(&self.pin)) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch))),
            ))
        }
    }
}

impl fmt::Debug for PinnedVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinnedVerifier")
            .field("pin", &hex::encode(self.pin))
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.matches(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOfferedOrEnabled,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.matches(cert)?;
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        // rustls offers only the TLS 1.3 ones of these in a TLS 1.3 handshake.
        self.algorithms.supported_schemes()
    }
}
