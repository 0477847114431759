//! The PEM files of a `tls`/`https` health check (`ca_file`, `cert_file`,
//! `key_file`), read and checked in one place.
//!
//! Their bytes are read when the config is loaded and kept in it
//! ([`FileContents`]): they are part of the desired state, so a reload that
//! finds a file's contents changed (a renewed certificate, a rotated CA)
//! rebuilds the checks that use it even when no line of the config changed,
//! and a health check never reads a file itself. Config validation parses
//! them with the same functions the checks build their TLS client with, so
//! `lbd --check-config`, a reload and the start refuse a file the checks
//! could not use, and the two can never disagree about a file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::Health;

/// A file the config names and the bytes it held when the config was loaded.
/// Two are equal only when path and contents both are.
#[derive(Clone, PartialEq, Eq)]
pub struct FileContents {
    /// The file as configured.
    pub path: PathBuf,
    /// Its contents at load time.
    pub bytes: Arc<[u8]>,
}

impl std::fmt::Debug for FileContents {
    // Never the bytes: a key file's contents must not reach a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?} ({} bytes)", self.path, self.bytes.len())
    }
}

impl FileContents {
    /// Reads `path` for the setting `key` (bounded, regular files only).
    pub fn read(key: &'static str, path: &Path) -> Result<FileContents, TlsFileError> {
        Ok(FileContents {
            path: path.to_owned(),
            bytes: read(key, path)?.into(),
        })
    }
}

/// The TLS material a `[backend.health]` names, parsed and checked.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    /// Trust anchors from `ca_file`; `None` when it is not set (the chain is
    /// then not verified).
    pub roots: Option<Arc<RootCertStore>>,
    /// The client certificate (`cert_file`) and its key (`key_file`);
    /// `None` when they are not set.
    pub client: Option<Arc<CertifiedKey>>,
}

/// A TLS file lbd cannot use, and which setting named it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot use {key} {path:?}: {reason}")]
pub struct TlsFileError {
    /// The setting: `ca_file`, `cert_file` or `key_file`.
    pub key: &'static str,
    /// The file as configured.
    pub path: String,
    /// What is wrong with it, and what to do.
    pub reason: String,
}

impl TlsFiles {
    /// Parses the TLS files `health` holds (read when its config was
    /// loaded: no I/O here); the first unusable one is the error.
    pub fn parse(health: &Health, provider: &CryptoProvider) -> Result<TlsFiles, TlsFileError> {
        let roots = match &health.ca_file {
            Some(ca) => Some(Arc::new(parse_roots(ca)?)),
            None => None,
        };
        let client = match (&health.cert_file, &health.key_file) {
            (Some(cert), Some(key)) => Some(Arc::new(parse_client(cert, key, provider)?)),
            _ => None,
        };
        Ok(TlsFiles { roots, client })
    }
}

/// The CA certificates of `ca_file`, as trust anchors.
pub fn parse_roots(ca: &FileContents) -> Result<RootCertStore, TlsFileError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certificates(ca, "ca_file")? {
        roots.add(cert).map_err(|e| {
            error(
                "ca_file",
                &ca.path,
                format!("not a usable CA certificate: {e}"),
            )
        })?;
    }
    Ok(roots)
}

/// The client certificate chain of `cert_file` with the key of `key_file`,
/// which must be a key rustls can sign with and match the certificate.
pub fn parse_client(
    cert: &FileContents,
    key: &FileContents,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, TlsFileError> {
    let chain = parse_certificates(cert, "cert_file")?;
    let der = PrivateKeyDer::from_pem_slice(&key.bytes).map_err(|e| {
        let reason = match e {
            pem::Error::NoItemsFound => "no PEM private key in it (expected a \"PRIVATE KEY\", \
                                         \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)"
                .to_owned(),
            other => format!("not a PEM private key: {other}"),
        };
        error("key_file", &key.path, reason)
    })?;
    CertifiedKey::from_der(chain, der, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => error(
            "key_file",
            &key.path,
            format!("it is not the key of the certificate in {:?}", cert.path),
        ),
        other => error(
            "key_file",
            &key.path,
            format!("unusable private key: {other}"),
        ),
    })
}

/// Every certificate in the PEM file; at least one.
fn parse_certificates(
    file: &FileContents,
    key: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsFileError> {
    let path = &file.path;
    let certs = CertificateDer::pem_slice_iter(&file.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| error(key, path, format!("not a PEM certificate file: {e}")))?;
    if certs.is_empty() {
        return Err(error(
            key,
            path,
            "no PEM certificate in it (expected a \"BEGIN CERTIFICATE\" block)",
        ));
    }
    Ok(certs)
}

/// Largest certificate, key or CA bundle read (a system bundle is ~200 KiB).
const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a regular file of at most [`MAX_FILE_BYTES`]: `/dev/zero` or a
/// FIFO named by mistake must not hang or exhaust a reload.
fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, TlsFileError> {
    use std::io::Read;
    if let Ok(meta) = std::fs::metadata(path)
        && !meta.is_file()
    {
        return Err(error(key, path, "is not a regular file; fix the path"));
    }
    let mut bytes = Vec::new();
    let read = std::fs::File::open(path)
        .and_then(|file| file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes));
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(error(
            key,
            path,
            format!(
                "is larger than {} MiB; is this the right file?",
                MAX_FILE_BYTES >> 20
            ),
        ));
    }
    read.map(|_| bytes).map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::PermissionDenied => {
                "; it is read as the user the program runs as: give that user read access \
                 (for the lbd service, e.g. with LoadCredential=)"
            }
            std::io::ErrorKind::NotFound => "; fix the path",
            _ => "",
        };
        error(key, path, format!("{e}{hint}"))
    })
}

fn error(key: &'static str, path: &Path, reason: impl Into<String>) -> TlsFileError {
    TlsFileError {
        key,
        path: path.display().to_string(),
        reason: reason.into(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{Config, ConfigError};

    /// A private directory with a CA, a client certificate it signed and
    /// that certificate's key, as PEM files.
    struct Files {
        dir: PathBuf,
    }

    impl Files {
        fn new(tag: &str) -> Files {
            let dir =
                std::env::temp_dir().join(format!("lbd-tls-files-{tag}-{}", std::process::id()));
            std::fs::create_dir_all(&dir).unwrap();
            let ca_key = rcgen::KeyPair::generate().unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key).unwrap();
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["lbd".to_owned()])
                .unwrap()
                .signed_by(&key, &ca)
                .unwrap();
            let other = rcgen::KeyPair::generate().unwrap();
            let files = Files { dir };
            files.write("ca.crt", &ca.pem());
            files.write("client.crt", &cert.pem());
            files.write("client.key", &key.serialize_pem());
            files.write("other.key", &other.serialize_pem());
            files.write("garbage", "not PEM at all\n");
            files
        }

        fn write(&self, name: &str, contents: &str) {
            std::fs::write(self.dir.join(name), contents).unwrap();
        }

        fn path(&self, name: &str) -> PathBuf {
            self.dir.join(name)
        }

        /// A config whose https check uses these files (by name).
        fn config(&self, ca: &str, cert: &str, key: &str) -> Result<Config, ConfigError> {
            let text = format!(
                "[[frontend]]\nname = \"f\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"b\"\n\
                 [[backend]]\nname = \"b\"\nservers = [{{ address = \"127.0.0.1:1\" }}]\n\
                 [backend.health]\ncheck = \"https\"\n\
                 ca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\n",
                self.path(ca),
                self.path(cert),
                self.path(key)
            );
            Config::parse(Path::new("lbd.toml"), &text)
        }
    }

    impl Drop for Files {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    fn only_problem(result: Result<Config, ConfigError>) -> String {
        match result {
            Err(ConfigError::Invalid { problems }) if problems.len() == 1 => problems[0].one_line(),
            other => panic!("expected one problem, got {other:?}"),
        }
    }

    #[test]
    fn usable_files_load() {
        let files = Files::new("good");
        let config = files.config("ca.crt", "client.crt", "client.key").unwrap();
        let provider = rustls::crypto::ring::default_provider();
        let loaded = TlsFiles::parse(&config.backends[0].health, &provider).unwrap();
        assert_eq!(loaded.roots.unwrap().len(), 1);
        assert!(loaded.client.is_some());
    }

    #[test]
    fn a_missing_or_unreadable_file_is_refused_at_its_key() {
        let files = Files::new("missing");
        let missing = only_problem(files.config("nope.crt", "client.crt", "client.key"));
        assert!(
            missing.starts_with("lbd.toml:10:11: cannot use ca_file"),
            "{missing}"
        );
        assert!(missing.contains("No such file or directory"), "{missing}");
        // A directory stands in for a file lbd may not read (the tests run
        // as root, who reads any file).
        std::fs::create_dir_all(files.path("key.d")).unwrap();
        let unreadable = only_problem(files.config("ca.crt", "client.crt", "key.d"));
        assert!(
            unreadable.starts_with("lbd.toml:12:12: cannot use key_file"),
            "{unreadable}"
        );
    }

    #[test]
    fn files_without_the_right_pem_are_refused() {
        let files = Files::new("pem");
        let no_cert = only_problem(files.config("garbage", "client.crt", "client.key"));
        assert!(
            no_cert.contains("ca_file") && no_cert.contains("no PEM certificate"),
            "{no_cert}"
        );
        let no_key = only_problem(files.config("ca.crt", "client.crt", "client.crt"));
        assert!(
            no_key.contains("key_file") && no_key.contains("no PEM private key"),
            "{no_key}"
        );
        let no_client_cert = only_problem(files.config("ca.crt", "client.key", "client.key"));
        assert!(
            no_client_cert.starts_with("lbd.toml:11:13: cannot use cert_file"),
            "{no_client_cert}"
        );
        let wrong_key = only_problem(files.config("ca.crt", "client.crt", "other.key"));
        assert!(
            wrong_key.contains("is not the key of the certificate"),
            "{wrong_key}"
        );
    }

    #[test]
    fn an_sni_tls_cannot_send_is_refused() {
        let text = "[[frontend]]\nname = \"f\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"b\"\n\
                    [[backend]]\nname = \"b\"\nservers = [{ address = \"127.0.0.1:1\" }]\n\
                    [backend.health]\ncheck = \"tls\"\nsni = \"not a name\"\n";
        let problem = only_problem(Config::parse(Path::new("lbd.toml"), text));
        assert!(problem.starts_with("lbd.toml:10:7: `sni`"), "{problem}");
    }
}
