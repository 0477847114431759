//! The TLS client verifier the health checks and `lbctl probe` share: one
//! that lets any server certificate chain through the handshake, so a
//! check without `ca_file` can still prove the process answers and the
//! probe can report what the server presented instead of stopping at
//! "unknown issuer".

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

/// What [`AcceptAnyChain::recording`] saw during one handshake.
#[derive(Debug, Default)]
pub struct RecordedChain {
    /// The leaf first, then what the server sent with it.
    pub chain: Vec<CertificateDer<'static>>,
    /// With a CA to verify against: why the chain did not verify.
    pub chain_error: Option<String>,
}

/// Accepts any server certificate chain, while still checking the
/// handshake's signatures with the crypto provider's algorithms, so the
/// peer proves it holds the key of the certificate it showed.
#[derive(Debug)]
pub struct AcceptAnyChain {
    provider: Arc<CryptoProvider>,
    recording: Option<Recording>,
}

/// Where a recording verifier puts each chain, and what it judges it by.
#[derive(Debug)]
struct Recording {
    ca: Option<Arc<WebPkiServerVerifier>>,
    into: Arc<Mutex<RecordedChain>>,
}

impl AcceptAnyChain {
    /// Accepts any chain and keeps nothing: a health check without
    /// `ca_file` (lbd has no trust anchor to judge it by).
    pub fn new(provider: Arc<CryptoProvider>) -> AcceptAnyChain {
        AcceptAnyChain {
            provider,
            recording: None,
        }
    }

    /// Accepts any chain and records it `into`, with, when `ca` is given,
    /// why it does not verify against it. Whether the certificate names
    /// the server is left to the caller, which can explain a mismatch
    /// better than rustls.
    pub fn recording(
        provider: Arc<CryptoProvider>,
        ca: Option<Arc<WebPkiServerVerifier>>,
        into: Arc<Mutex<RecordedChain>>,
    ) -> AcceptAnyChain {
        AcceptAnyChain {
            provider,
            recording: Some(Recording { ca, into }),
        }
    }
}

impl ServerCertVerifier for AcceptAnyChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(recording) = &self.recording else {
            return Ok(ServerCertVerified::assertion());
        };
        let chain_error = recording.ca.as_ref().and_then(|ca| {
            match ca.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
            {
                Ok(_) => None,
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => None,
                Err(e) => Some(e.to_string()),
            }
        });
        let mut recorded = recording
            .into
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        recorded.chain = std::iter::once(end_entity)
            .chain(intermediates)
            .map(|cert| cert.clone().into_owned())
            .collect();
        recorded.chain_error = chain_error;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
