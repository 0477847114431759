//! `[backend.discovery]` and the kubeconfig it names: what lbd needs to
//! watch the cluster's own list of apiservers (DESIGN.md §3.1).
//!
//! The kubeconfig is parsed by `kube` (the same crate that watches), and
//! only its current context's CA, credentials and `tls-server-name` are
//! used: never its `server:` URL, which is usually the endpoint lbd itself
//! serves. Validation parses it, so `--check-config`, a reload and the
//! start refuse a kubeconfig the watch could not use.

use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use kube::config::{AuthInfo, Kubeconfig};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;

use super::FileContents;

/// Where discovery keeps its last known servers when `[global] state_dir` is not set.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/lbd";

/// The TLS server name discovery sends when the kubeconfig sets none: the
/// name every kubeadm apiserver certificate carries.
pub const DEFAULT_TLS_SERVER_NAME: &str = "kubernetes";

/// Learning a backend's servers from the cluster (`[backend.discovery]`).
#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// The kubeconfig (CA and credentials), with its bytes at load time.
    pub kubeconfig: FileContents,
    /// The service in namespace `default` whose EndpointSlices list the servers.
    pub service: String,
    /// How long an address gone from the cluster's list stays a member.
    pub remove_after: Duration,
}

/// What the kubeconfig's current context gives discovery.
#[derive(Clone)]
pub struct KubeAccess {
    /// The cluster CA certificates (DER): the apiservers' chains are verified against them.
    pub roots: Vec<CertificateDer<'static>>,
    /// The name the apiserver certificate is checked for (and sent as SNI).
    pub tls_server_name: String,
    /// The kubeconfig's `server:`, for messages only: lbd never dials it.
    pub server: Option<String>,
    /// How lbd authenticates.
    pub credentials: KubeCredentials,
}

/// How discovery authenticates to the apiserver.
#[derive(Clone)]
pub enum KubeCredentials {
    /// A client certificate (kubeadm's `kubeadm kubeconfig user`), as the
    /// kubeconfig's user entry gives it (data or file paths).
    ClientCertificate(Box<AuthInfo>),
    /// A bearer token (inline or `tokenFile`).
    Token(Box<AuthInfo>),
}

impl KubeCredentials {
    /// The kubeconfig's user entry.
    pub fn auth_info(&self) -> &AuthInfo {
        match self {
            KubeCredentials::ClientCertificate(a) | KubeCredentials::Token(a) => a,
        }
    }
}

impl std::fmt::Debug for KubeAccess {
    // Never the credentials: they must not reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let how = match self.credentials {
            KubeCredentials::ClientCertificate(_) => "client certificate",
            KubeCredentials::Token(_) => "token",
        };
        write!(
            f,
            "KubeAccess {{ {} CA certificates, tls_server_name: {:?}, {how} }}",
            self.roots.len(),
            self.tls_server_name
        )
    }
}

/// A kubeconfig discovery cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot use kubeconfig {path:?}: {reason}")]
pub struct KubeconfigError {
    /// The file as configured.
    pub path: PathBuf,
    /// What is wrong with it, and what to do.
    pub reason: String,
}

impl KubeAccess {
    /// Parses the kubeconfig `file` holds (its current context, or its only
    /// one). A CA file the kubeconfig names by path is read here.
    pub fn parse(file: &FileContents) -> Result<KubeAccess, KubeconfigError> {
        let fail = |reason: String| KubeconfigError {
            path: file.path.clone(),
            reason,
        };
        let text = std::str::from_utf8(&file.bytes)
            .map_err(|_| fail("it is not UTF-8 text: expected a YAML kubeconfig".into()))?;
        let config =
            Kubeconfig::from_yaml(text).map_err(|e| fail(format!("not a kubeconfig: {e}")))?;
        let context_name = match (&config.current_context, config.contexts.as_slice()) {
            (Some(name), _) if !name.is_empty() => name.clone(),
            (_, [only]) => only.name.clone(),
            _ => {
                return Err(fail(
                    "it sets no current-context: set one (kubectl config use-context)".into(),
                ));
            }
        };
        let context = config
            .contexts
            .iter()
            .find(|c| c.name == context_name)
            .and_then(|c| c.context.clone())
            .ok_or_else(|| {
                fail(format!(
                    "its current-context {context_name:?} is not defined"
                ))
            })?;
        let cluster = config
            .clusters
            .iter()
            .find(|c| c.name == context.cluster)
            .and_then(|c| c.cluster.clone())
            .ok_or_else(|| fail(format!("its cluster {:?} is not defined", context.cluster)))?;
        let user_name = context.user.clone().unwrap_or_default();
        let user = config
            .auth_infos
            .iter()
            .find(|u| u.name == user_name)
            .and_then(|u| u.auth_info.clone())
            .ok_or_else(|| fail(format!("its user {user_name:?} is not defined")))?;

        let ca_pem = match (
            &cluster.certificate_authority_data,
            &cluster.certificate_authority,
        ) {
            (Some(data), _) => STANDARD
                .decode(data.trim())
                .map_err(|e| fail(format!("certificate-authority-data is not base64: {e}")))?,
            (None, Some(path)) => std::fs::read(path).map_err(|e| {
                fail(format!(
                    "cannot read its certificate-authority {path:?}: {e}"
                ))
            })?,
            (None, None) => {
                return Err(fail(
                    "its cluster has no certificate-authority(-data): lbd verifies the apiservers against the cluster CA".into(),
                ));
            }
        };
        let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| fail(format!("its certificate authority is not PEM: {e}")))?;
        if roots.is_empty() {
            return Err(fail(
                "its certificate authority holds no certificate".into(),
            ));
        }
        let has_cert = user.client_certificate.is_some() || user.client_certificate_data.is_some();
        let has_key = user.client_key.is_some() || user.client_key_data.is_some();
        let credentials = if has_cert && has_key {
            KubeCredentials::ClientCertificate(Box::new(user))
        } else if user.token.is_some() || user.token_file.is_some() {
            KubeCredentials::Token(Box::new(user))
        } else {
            return Err(fail(format!(
                "its user {user_name:?} has neither a client certificate and key nor a token: make one with `kubeadm kubeconfig user` (exec plugins are not supported)"
            )));
        };
        let tls_server_name = cluster
            .tls_server_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| DEFAULT_TLS_SERVER_NAME.to_owned());
        if rustls::pki_types::ServerName::try_from(tls_server_name.as_str()).is_err() {
            return Err(fail(format!(
                "its tls-server-name {tls_server_name:?} is not a DNS name or IP address"
            )));
        }
        Ok(KubeAccess {
            roots,
            tls_server_name,
            server: cluster.server.clone(),
            credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kubeconfig(cluster: &str, user: &str) -> FileContents {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: lab\n  cluster:\n{cluster}\
             contexts:\n- name: ctx\n  context:\n    cluster: lab\n    user: me\n\
             current-context: ctx\nusers:\n- name: me\n  user:\n{user}"
        );
        FileContents {
            path: PathBuf::from("discovery.conf"),
            bytes: text.into_bytes().into(),
        }
    }

    fn ca_data() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&key)
            .unwrap()
            .pem();
        STANDARD.encode(pem)
    }

    #[test]
    fn a_token_kubeconfig_is_usable_and_names_kubernetes_by_default() {
        let cluster = format!(
            "    server: https://lb:6443\n    certificate-authority-data: {}\n",
            ca_data()
        );
        let access = KubeAccess::parse(&kubeconfig(&cluster, "    token: abc\n")).unwrap();
        assert!(matches!(access.credentials, KubeCredentials::Token(_)));
        assert_eq!(access.tls_server_name, DEFAULT_TLS_SERVER_NAME);
        assert_eq!(access.server.as_deref(), Some("https://lb:6443"));
        assert!(!format!("{access:?}").contains("abc"), "no secret in Debug");
    }

    #[test]
    fn a_kubeconfig_without_credentials_or_ca_is_refused_with_the_reason() {
        let cluster = format!("    certificate-authority-data: {}\n", ca_data());
        let err = KubeAccess::parse(&kubeconfig(&cluster, "    username: x\n")).unwrap_err();
        assert!(err.reason.contains("kubeadm kubeconfig user"), "{err}");
        let err = KubeAccess::parse(&kubeconfig(
            "    server: https://lb:6443\n",
            "    token: t\n",
        ))
        .unwrap_err();
        assert!(err.reason.contains("certificate-authority"), "{err}");
    }
}
