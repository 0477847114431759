//! The `cluster-info` ConfigMap (namespace `kube-public`) as kubeadm's
//! bootstrap-token phase writes it: `data.kubeconfig`, a kubeconfig whose
//! one cluster names the CA and the API server, and one
//! `data.jws-kubeconfig-<token-id>` per token, added by the bootstrap signer.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use yaml_rust2::{Yaml, YamlLoader};

use super::jws::KEY_PREFIX;

/// The ConfigMap's data that discovery reads.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterInfo {
    /// `data.kubeconfig`, exactly as served: the signed content.
    pub kubeconfig: Option<String>,
    /// The signatures by token ID.
    pub signatures: BTreeMap<String, String>,
}

impl ClusterInfo {
    /// Reads a ConfigMap as the API serves it (JSON).
    pub(crate) fn from_json(body: &[u8]) -> Result<ClusterInfo, String> {
        let value: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| format!("the answer is not a JSON object: {e}"))?;
        let kind = value["kind"].as_str().unwrap_or("no kind");
        if kind != "ConfigMap" {
            return Err(format!("the answer is a {kind:?}, not a ConfigMap"));
        }
        let mut info = ClusterInfo::default();
        let Some(data) = value["data"].as_object() else {
            return Ok(info);
        };
        for (key, value) in data {
            let Some(text) = value.as_str() else { continue };
            if key == "kubeconfig" {
                info.kubeconfig = Some(text.to_owned());
            } else if let Some(id) = key.strip_prefix(KEY_PREFIX) {
                info.signatures.insert(id.to_owned(), text.to_owned());
            }
        }
        Ok(info)
    }
}

/// What discovery takes from the kubeconfig in `cluster-info`.
#[derive(Debug, Clone)]
pub(crate) struct Kubeconfig {
    /// The first cluster's `server:`, the address kubelet uses after the join.
    pub server: Option<String>,
    /// The CA certificates of `certificate-authority-data`, in DER.
    pub ca: Vec<CertificateDer<'static>>,
}

impl Kubeconfig {
    /// Parses the YAML kubeconfig (clientcmd writes YAML; JSON is YAML too).
    pub(crate) fn parse(text: &str) -> Result<Kubeconfig, String> {
        let docs = YamlLoader::load_from_str(text)
            .map_err(|e| format!("the kubeconfig in cluster-info is not YAML: {e}"))?;
        let doc = docs
            .first()
            .ok_or("the kubeconfig in cluster-info is empty")?;
        let cluster = match &doc["clusters"] {
            Yaml::Array(clusters) if !clusters.is_empty() => &clusters[0]["cluster"],
            _ => return Err("the kubeconfig in cluster-info lists no cluster".into()),
        };
        let server = cluster["server"].as_str().map(str::to_owned);
        let Some(data) = cluster["certificate-authority-data"].as_str() else {
            return Err(
                "the kubeconfig in cluster-info has no certificate-authority-data for its cluster"
                    .into(),
            );
        };
        let pem = STANDARD
            .decode(data.trim())
            .map_err(|e| format!("certificate-authority-data is not base64: {e}"))?;
        let ca = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("certificate-authority-data is not PEM certificates: {e}"))?;
        if ca.is_empty() {
            return Err("certificate-authority-data holds no PEM certificate".into());
        }
        Ok(Kubeconfig { server, ca })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn reads_the_kubeconfig_clientcmd_writes() {
        let pem = ca_pem();
        let text = format!(
            "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    \
             server: https://cp.lab:6443\n  name: \"\"\ncontexts: null\ncurrent-context: \"\"\n\
             kind: Config\npreferences: {{}}\nusers: null\n",
            STANDARD.encode(&pem)
        );
        let config = Kubeconfig::parse(&text).unwrap();
        assert_eq!(config.server.as_deref(), Some("https://cp.lab:6443"));
        assert_eq!(config.ca.len(), 1);
        let json = format!(
            r#"{{"clusters":[{{"cluster":{{"certificate-authority-data":"{}","server":"https://x:1"}}}}]}}"#,
            STANDARD.encode(&pem)
        );
        assert_eq!(
            Kubeconfig::parse(&json).unwrap().server.as_deref(),
            Some("https://x:1")
        );
    }

    #[test]
    fn names_what_is_missing() {
        assert!(
            Kubeconfig::parse("clusters: []")
                .unwrap_err()
                .contains("no cluster")
        );
        let no_ca = "clusters:\n- cluster:\n    server: https://a:1\n";
        assert!(
            Kubeconfig::parse(no_ca)
                .unwrap_err()
                .contains("certificate-authority-data")
        );
        let bad = "clusters:\n- cluster:\n    certificate-authority-data: '%%'\n";
        assert!(Kubeconfig::parse(bad).unwrap_err().contains("not base64"));
        assert!(Kubeconfig::parse("a: [").is_err());
    }

    #[test]
    fn reads_the_configmap_json() {
        let body = br#"{"kind":"ConfigMap","apiVersion":"v1","metadata":{"name":"cluster-info"},
            "data":{"kubeconfig":"k","jws-kubeconfig-abcdef":"s1","jws-kubeconfig-x1y2z3":"s2"}}"#;
        let info = ClusterInfo::from_json(body).unwrap();
        assert_eq!(info.kubeconfig.as_deref(), Some("k"));
        assert_eq!(
            info.signatures.keys().collect::<Vec<_>>(),
            ["abcdef", "x1y2z3"]
        );
        assert!(ClusterInfo::from_json(br#"{"kind":"Status"}"#).is_err());
        assert!(ClusterInfo::from_json(b"<html>").is_err());
    }
}
