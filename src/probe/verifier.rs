//! The certificate verifier of `lbctl probe`: it accepts every server
//! certificate and records it, and with `--ca` records whether the chain
//! verifies, so the probe can report what the server presented and judge it
//! afterwards instead of stopping the handshake at "unknown issuer".

use std::sync::{Arc, Mutex};

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use super::tls::lock;

/// What the verifier saw during one handshake.
#[derive(Debug, Default)]
pub(crate) struct Recorded {
    /// The leaf first, then what the server sent with it.
    pub chain: Vec<CertificateDer<'static>>,
    /// With `--ca`: why the chain did not verify.
    pub chain_error: Option<String>,
}

/// Accepts every certificate, records it, and (with `--ca`) records whether
/// the chain verifies. Handshake signatures are still checked, so the peer
/// proves it holds the key of the certificate it showed.
#[derive(Debug)]
pub(crate) struct RecordingVerifier {
    /// The `--ca` verifier, when given.
    pub inner: Option<Arc<WebPkiServerVerifier>>,
    /// Checks the handshake signatures.
    pub provider: Arc<CryptoProvider>,
    /// Where this handshake's chain goes.
    pub recorded: Arc<Mutex<Recorded>>,
}

impl ServerCertVerifier for RecordingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain_error = self.inner.as_ref().and_then(|inner| {
            match inner.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ) {
                Ok(_) => None,
                // The probe checks the name itself, to attach the kubeadm fix.
                Err(rustls::Error::InvalidCertificate(
                    CertificateError::NotValidForName
                    | CertificateError::NotValidForNameContext { .. },
                )) => None,
                Err(e) => Some(e.to_string()),
            }
        });
        let mut recorded = lock(&self.recorded);
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
