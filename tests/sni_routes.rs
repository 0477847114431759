//! TLS passthrough routing by SNI: real rustls clients and servers behind
//! lbd, each name reaching its backend with the backend's own certificate,
//! the default route (no match, no SNI, not TLS), a silent client closed
//! after `inspect_timeout` and counted, and routes changed by a reload.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use support::metrics::value;
use support::{Backend, Lbd, wait_until};

struct Pki {
    issuer: Issuer<'static, KeyPair>,
    ca: CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "sni test CA");
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Pki {
            ca: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn issue(&self, san: &str) -> (CertificateDer<'static>, PrivateKeyDer<'static>) {
        let params = CertificateParams::new(vec![san.to_owned()]).unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes()).unwrap();
        (cert.der().clone(), key)
    }
}

/// A TLS server for `san` that writes `label` after the handshake and
/// closes; returns its address and its certificate.
async fn tls_server(
    pki: &Pki,
    san: &str,
    label: &'static str,
) -> (SocketAddr, CertificateDer<'static>) {
    let (cert, key) = pki.issue(san);
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(stream).await {
                    let _ = tls.write_all(label.as_bytes()).await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    (addr, cert)
}

/// Connects through `lbd` as a TLS client for `name`, trusting only the
/// test CA; returns what the server wrote and the certificate it showed.
async fn tls_client(
    pki: &Pki,
    lbd: SocketAddr,
    name: ServerName<'static>,
) -> Result<(String, CertificateDer<'static>), std::io::Error> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let stream = TcpStream::connect(lbd).await?;
    let mut tls = connector.connect(name, stream).await?;
    let cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await?;
    Ok((answer, cert))
}

fn dns(name: &str) -> ServerName<'static> {
    ServerName::try_from(name.to_owned()).unwrap()
}

fn route_count(lbd: &Lbd, route: &str) -> f64 {
    value(
        &lbd.metrics(),
        "lbd_frontend_route_connections_total",
        &[("frontend", "api"), ("route", route)],
    )
}

fn config(a: SocketAddr, c: SocketAddr, plain: SocketAddr, routes: &str) -> String {
    format!(
        r#"[admin]
listen = "127.0.0.1:0"

[[frontend]]
name = "api"
listen = ["127.0.0.1:0"]
backend = "plain"
inspect_timeout = "300ms"
routes = [{routes}]

[[backend]]
name = "a"
servers = [{{ address = "{a}" }}]

[[backend]]
name = "c"
servers = [{{ address = "{c}" }}]

[[backend]]
name = "plain"
servers = [{{ address = "{plain}" }}]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_name_reaches_its_backend_and_the_rest_the_default() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = Pki::new();
    let (a, a_cert) = tls_server(&pki, "a.example", "backend a").await;
    let (c, c_cert) = tls_server(&pki, "*.c.example", "backend c").await;
    let plain = Backend::named("plain");
    let routes = r#"{ sni = "A.example", backend = "a" }, { sni = "*.c.example", backend = "c" }"#;
    let lbd = Lbd::start(&config(a, c, plain.addr, routes));
    let addr = lbd.addr("api");
    wait_until(Duration::from_secs(10), "the servers to be up", || {
        lbd.status()["backends"]
            .as_array()
            .unwrap()
            .iter()
            .all(|b| b["servers"][0]["health"] == "up")
    });

    // Each name reaches its backend, whose own certificate the client
    // verifies: lbd passed the handshake through untouched.
    let (answer, cert) = tls_client(&pki, addr, dns("a.example")).await.unwrap();
    assert_eq!((answer.as_str(), &cert), ("backend a", &a_cert));
    let (answer, cert) = tls_client(&pki, addr, dns("x.c.example")).await.unwrap();
    assert_eq!((answer.as_str(), &cert), ("backend c", &c_cert));
    assert_eq!(route_count(&lbd, "a.example"), 1.0);
    assert_eq!(route_count(&lbd, "*.c.example"), 1.0);

    // No route for the name, and no SNI at all (an IP as server name): the
    // default backend, a plain echo server, which the TLS client cannot talk to.
    let before = plain.accepted();
    assert!(tls_client(&pki, addr, dns("other.example")).await.is_err());
    let ip = ServerName::IpAddress(std::net::IpAddr::from([127, 0, 0, 1]).into());
    assert!(tls_client(&pki, addr, ip).await.is_err());
    wait_until(
        Duration::from_secs(5),
        "two connections to the default",
        || plain.accepted() == before + 2,
    );

    // Not TLS: the default backend, with the client's bytes intact.
    let mut client = TcpStream::connect(addr).await.unwrap();
    client.write_all(b"hello plain\n").await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("hello plain") {
        let mut buf = [0u8; 64];
        let n = client.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&seen), "plain\nhello plain\n");
    assert_eq!(route_count(&lbd, "default"), 3.0);

    // A silent client is closed after inspect_timeout and counted.
    let before = plain.accepted();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 8];
    let read = tokio::time::timeout(Duration::from_secs(10), silent.read(&mut buf)).await;
    assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
    let rejected = value(
        &lbd.metrics(),
        "lbd_frontend_rejected_total",
        &[("frontend", "api"), ("reason", "inspect_timeout")],
    );
    assert_eq!(rejected, 1.0);
    assert_eq!(
        plain.accepted(),
        before,
        "a silent client reached no server"
    );

    // `lbctl status` shows the routes and their counts.
    let status = lbd.lbctl(&["status"]);
    assert!(
        status.stdout.contains("route a.example → a: 1 total"),
        "{}",
        status.stdout
    );

    // `lbctl probe --tls --sni NAME` through lbd shows which backend's
    // certificate the route leads to.
    let probe = support::lbctl(&["probe", &addr.to_string(), "--tls", "--sni", "x.c.example"]);
    assert!(probe.stdout.contains("*.c.example"), "{}", probe.stdout);

    // A reload moves a route: the name now reaches the other backend, and
    // the reload names the change.
    let moved = r#"{ sni = "a.example", backend = "c" }, { sni = "*.c.example", backend = "c" }"#;
    lbd.rewrite_config(&config(a, c, plain.addr, moved));
    let (code, body) = lbd.post("/api/v1/reload");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("a.example → c instead of a"), "{body}");
    // Backend c's certificate is for *.c.example: the client refuses it
    // for a.example, which proves the connection went to c.
    let err = tls_client(&pki, addr, dns("a.example")).await.unwrap_err();
    assert!(err.to_string().contains("certificate"), "{err}");
    assert_eq!(route_count(&lbd, "a.example"), 2.0, "counts carry over");
}
