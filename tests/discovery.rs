//! Discovery against a stand-in apiserver that speaks the real API
//! (tests/support/kube_api.rs): lbd learns its servers from the
//! EndpointSlices of `default/kubernetes`, reaching the API through the
//! backend's own servers with the kubeconfig's CA and client certificate,
//! never through the kubeconfig's `server:`.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use support::https::Pki;
use support::kube_api::{KubeApi, SLICES_PATH};
use support::{Backend, Lbd, TempDir, hold, metrics, wait_until};

/// A listener that counts the connections made to it and closes them: the
/// kubeconfig's `server:`, which discovery must never dial.
struct Recorder {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
}

impl Recorder {
    fn start() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                count.fetch_add(1, Ordering::Relaxed);
                drop(stream);
            }
        });
        Recorder { addr, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

/// Two echo servers on 127.0.0.2 and 127.0.0.3, one port: the "apiservers"
/// the cluster lists (an EndpointSlice has one port for all its endpoints).
fn two_apiservers() -> (Backend, Backend, u16) {
    for _ in 0..20 {
        let probe = TcpListener::bind("127.0.0.2:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        if TcpListener::bind(("127.0.0.3", port)).is_err() {
            continue;
        }
        let two = Backend::named_at("cp2", SocketAddr::from(([127, 0, 0, 2], port)));
        let three = Backend::named_at("cp3", SocketAddr::from(([127, 0, 0, 3], port)));
        return (two, three, port);
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

struct Setup {
    /// Keeps the CA and client files alive.
    _pki: Pki,
    api: KubeApi,
    recorder: Recorder,
    kubeconfig: std::path::PathBuf,
    state: TempDir,
    cp2: Backend,
    _cp3: Backend,
    port: u16,
}

impl Setup {
    /// The stand-in listing `listed` (of "2" and "3") as the cluster's apiservers.
    fn new(listed: &[&str]) -> Setup {
        let pki = Pki::new(&["kubernetes", "127.0.0.1"]);
        let (cp2, cp3, port) = two_apiservers();
        let addresses: Vec<String> = listed.iter().map(|n| format!("127.0.0.{n}")).collect();
        let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let api = KubeApi::start(&pki, "kubernetes", &addresses, port);
        let recorder = Recorder::start();
        let state = TempDir::new("discovery-state");
        let kubeconfig = state.write(
            "discovery.conf",
            &KubeApi::kubeconfig(&pki, &format!("https://{}", recorder.addr)),
        );
        Setup {
            _pki: pki,
            api,
            recorder,
            kubeconfig,
            state,
            cp2,
            _cp3: cp3,
            port,
        }
    }

    fn config(&self, remove_after: &str) -> String {
        format!(
            "[global]\nstate_dir = {:?}\n\n\
             [[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"cp\"\n\n\
             [[backend]]\nname = \"cp\"\nservers = [ {{ name = \"seed\", address = \"{}\" }} ]\n\
             [backend.health]\ninterval = \"250ms\"\nfast_interval = \"100ms\"\nrise = 1\nfall = 1\n\
             [backend.discovery]\nkubeconfig = {:?}\nremove_after = \"{remove_after}\"\n",
            self.state.0.join("state"),
            self.api.addr,
            self.kubeconfig,
        )
    }

    fn server(&self, n: &str) -> String {
        format!("127.0.0.{n}:{}", self.port)
    }

    fn set_listed(&self, listed: &[&str]) {
        let addresses: Vec<String> = listed.iter().map(|n| format!("127.0.0.{n}")).collect();
        let addresses: Vec<&str> = addresses.iter().map(String::as_str).collect();
        self.api.set_endpoints(&addresses, self.port);
    }
}

fn servers(lbd: &Lbd) -> Vec<(String, String)> {
    lbd.status()["backends"][0]["servers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_owned(),
                s["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn has_server(lbd: &Lbd, name: &str) -> bool {
    servers(lbd).iter().any(|(n, _)| n == name)
}

fn updates(lbd: &Lbd, result: &str) -> f64 {
    metrics::value(
        &lbd.metrics(),
        "lbd_discovery_updates_total",
        &[("backend", "cp"), ("result", result)],
    )
}

/// The greetings of `count` new connections through the frontend.
fn greetings(lbd: &Lbd, count: usize) -> Vec<String> {
    (0..count).map(|_| hold(lbd.addr("api")).0).collect()
}

#[test]
fn discovered_servers_appear_and_take_traffic() {
    let setup = Setup::new(&["2", "3"]);
    let lbd = Lbd::start(&setup.config("30s"));
    let (two, three) = (setup.server("2"), setup.server("3"));
    wait_until(Duration::from_secs(5), "the discovered servers", || {
        has_server(&lbd, &two) && has_server(&lbd, &three)
    });
    let listed = servers(&lbd);
    assert!(
        listed.contains(&("seed".into(), "config".into())),
        "{listed:?}"
    );
    assert!(
        listed.contains(&(two.clone(), "discovered".into())),
        "{listed:?}"
    );
    assert!(
        listed.contains(&(three.clone(), "discovered".into())),
        "{listed:?}"
    );

    // The seed is the stand-in API itself: take it out of client traffic,
    // so every connection goes to a discovered server.
    let (code, body) = lbd.post("/api/v1/backends/cp/servers/seed/drain");
    assert_eq!(code, 200, "{body}");
    let mut seen = Vec::new();
    wait_until(
        Duration::from_secs(5),
        "both discovered servers to take traffic",
        || {
            seen.extend(greetings(&lbd, 2));
            seen.contains(&"cp2".to_owned()) && seen.contains(&"cp3".to_owned())
        },
    );
    assert!(setup.cp2.accepted.load(Ordering::Relaxed) > 0);

    let status = lbd.status();
    let discovery = &status["backends"][0]["discovery"];
    assert_eq!(discovery["state"], "watching", "{discovery}");
    assert_eq!(discovery["servers"], 2, "{discovery}");
    assert!(discovery["last_update"].is_string(), "{discovery}");
    assert!(discovery["error"].is_null(), "{discovery}");
    assert!(updates(&lbd, "applied") >= 1.0);
    assert!(setup.api.lists() >= 1 && setup.api.watches() >= 1);
    // Not one connection to the kubeconfig's `server:`.
    assert_eq!(setup.recorder.accepted(), 0);
}

#[test]
fn a_new_endpoint_joins_and_a_removed_one_leaves_after_remove_after() {
    let setup = Setup::new(&["2"]);
    let lbd = Lbd::start(&setup.config("2s"));
    let (two, three) = (setup.server("2"), setup.server("3"));
    wait_until(
        Duration::from_secs(5),
        "the first discovered server",
        || has_server(&lbd, &two),
    );
    assert!(!has_server(&lbd, &three));

    setup.set_listed(&["2", "3"]);
    wait_until(Duration::from_secs(5), "the joining server", || {
        has_server(&lbd, &three)
    });

    // cp2 leaves the cluster's list: it stays a member for remove_after.
    let unchanged = updates(&lbd, "unchanged");
    setup.set_listed(&["3"]);
    wait_until(
        Duration::from_secs(5),
        "lbd to take the shorter list",
        || updates(&lbd, "unchanged") > unchanged,
    );
    assert!(
        has_server(&lbd, &two),
        "a server gone from the list must stay for remove_after"
    );
    wait_until(Duration::from_secs(10), "the gone server to leave", || {
        !has_server(&lbd, &two)
    });
    assert!(has_server(&lbd, &three) && has_server(&lbd, "seed"));

    // A compacted history: the watch from an old resourceVersion gets 410
    // and lbd lists again; later changes still arrive.
    let lists = setup.api.lists();
    setup.api.compact();
    wait_until(Duration::from_secs(10), "a relist after 410 Gone", || {
        setup.api.lists() > lists
    });
    setup.set_listed(&["2", "3"]);
    wait_until(
        Duration::from_secs(5),
        "the server back after the relist",
        || has_server(&lbd, &two),
    );
    assert_eq!(setup.recorder.accepted(), 0);
}

#[test]
fn an_api_error_a_broken_watch_or_an_empty_list_removes_nothing() {
    let setup = Setup::new(&["2", "3"]);
    // remove_after 0: anything discovery wrongly took for "gone" would go at once.
    let lbd = Lbd::start(&setup.config("0s"));
    let (two, three) = (setup.server("2"), setup.server("3"));
    wait_until(Duration::from_secs(5), "the discovered servers", || {
        has_server(&lbd, &two) && has_server(&lbd, &three)
    });

    // A broken watch: lbd watches again; nothing changes.
    let watches = setup.api.watches();
    setup.api.break_watches();
    wait_until(Duration::from_secs(10), "a new watch", || {
        setup.api.watches() > watches
    });
    assert!(has_server(&lbd, &two) && has_server(&lbd, &three));

    // The API answers 500 and the watch breaks: errors, counted and shown.
    let errors = updates(&lbd, "error");
    setup.api.fail_with(Some(500));
    setup.api.break_watches();
    wait_until(Duration::from_secs(10), "discovery to fail", || {
        updates(&lbd, "error") > errors
    });
    let status = lbd.status();
    let discovery = &status["backends"][0]["discovery"];
    assert_eq!(discovery["state"], "failing", "{discovery}");
    assert!(discovery["error"].is_string(), "{discovery}");
    assert!(has_server(&lbd, &two) && has_server(&lbd, &three));

    // The API is back and lists nothing: ignored.
    setup.api.fail_with(None);
    setup.set_listed(&[]);
    wait_until(Duration::from_secs(15), "the empty list to be seen", || {
        updates(&lbd, "empty") >= 1.0
    });
    assert!(has_server(&lbd, &two) && has_server(&lbd, &three));
    assert_eq!(setup.recorder.accepted(), 0);
}

#[test]
fn a_restart_with_the_api_down_serves_the_saved_list() {
    let setup = Setup::new(&["2", "3"]);
    let config = setup.config("30s");
    let (two, three) = (setup.server("2"), setup.server("3"));
    {
        let lbd = Lbd::start(&config);
        wait_until(Duration::from_secs(5), "the discovered servers", || {
            has_server(&lbd, &two) && has_server(&lbd, &three)
        });
        let saved = setup.state.0.join("state/discovery-cp.json");
        wait_until(Duration::from_secs(5), "the list to be saved", || {
            std::fs::read_to_string(&saved).is_ok_and(|t| t.contains(&two) && t.contains(&three))
        });
    }
    // The API is gone (its address refuses): only the saved list can tell
    // the next lbd about cp2 and cp3.
    setup.api.stop();
    let lbd = Lbd::start(&config);
    // At once, from the file: no cluster answered.
    assert!(
        has_server(&lbd, &two) && has_server(&lbd, &three),
        "{:?}",
        servers(&lbd)
    );
    let mut seen = Vec::new();
    wait_until(
        Duration::from_secs(5),
        "the saved servers to take traffic",
        || {
            seen.extend(greetings(&lbd, 2));
            seen.contains(&"cp2".to_owned()) && seen.contains(&"cp3".to_owned())
        },
    );
    wait_until(Duration::from_secs(10), "the failing API to show", || {
        lbd.status()["backends"][0]["discovery"]["state"] == "failing"
    });
    assert!(has_server(&lbd, &two) && has_server(&lbd, &three));
    assert_eq!(setup.recorder.accepted(), 0);
}

/// The stand-in checked with the real kubectl (where installed): the same
/// list and watch a kube client gets, through kubectl's own TLS and
/// client-certificate code.
#[test]
fn the_stand_in_api_answers_kubectl() {
    if std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_err()
    {
        eprintln!("skipped: kubectl is not installed (apt-get install kubernetes-client)");
        return;
    }
    let pki = Pki::new(&["kubernetes", "127.0.0.1"]);
    let api = KubeApi::start(&pki, "kubernetes", &["127.0.0.2", "127.0.0.3"], 6443);
    let dir = TempDir::new("kubectl");
    let kubeconfig = dir.write(
        "kubeconfig",
        &KubeApi::kubeconfig(&pki, &format!("https://{}", api.addr)),
    );
    let kubectl = |path: &str| {
        let out = std::process::Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(&kubeconfig)
            .args(["get", "--raw", path])
            .env("HOME", &dir.0)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "kubectl get --raw {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    let selector = "labelSelector=kubernetes.io%2Fservice-name%3Dkubernetes";
    let list: serde_json::Value =
        serde_json::from_str(&kubectl(&format!("{SLICES_PATH}?{selector}"))).unwrap();
    assert_eq!(list["kind"], "EndpointSliceList");
    let version = list["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        list["items"][0]["endpoints"][1]["addresses"][0], "127.0.0.3",
        "{list}"
    );
    // A watch from before the last change: that change, then bookmarks,
    // until the server's timeout ends the stream.
    let before: u64 = version.parse::<u64>().unwrap() - 1;
    let stream = kubectl(&format!(
        "{SLICES_PATH}?{selector}&watch=true&resourceVersion={before}&allowWatchBookmarks=true&timeoutSeconds=1"
    ));
    let events: Vec<serde_json::Value> = stream
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events[0]["type"], "ADDED", "{stream}");
    assert!(events.iter().any(|e| e["type"] == "BOOKMARK"), "{stream}");
    // A compacted history: 410 Gone as an ERROR event.
    api.compact();
    let stream = kubectl(&format!(
        "{SLICES_PATH}?{selector}&watch=true&resourceVersion={before}&timeoutSeconds=1"
    ));
    let gone: serde_json::Value = serde_json::from_str(stream.lines().next().unwrap()).unwrap();
    assert_eq!(gone["type"], "ERROR");
    assert_eq!(gone["object"]["code"], 410);
    // Without a client certificate the handshake fails, as kube-apiserver
    // with client-certificate authentication only.
    let anonymous = dir.write(
        "anonymous",
        &KubeApi::kubeconfig(&pki, &format!("https://{}", api.addr))
            .lines()
            .filter(|l| !l.contains("client-"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    let out = std::process::Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(&anonymous)
        .args(["get", "--raw", SLICES_PATH])
        .env("HOME", &dir.0)
        .output()
        .unwrap();
    assert!(!out.status.success());
}
