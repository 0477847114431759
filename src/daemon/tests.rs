//! The daemon in-process, where a test must control what the process cannot
//! show from outside: a resolver that stalls on demand, and the reload lock.
//! Everything else about the daemon is tested through the real binary in
//! tests/.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};

use super::*;
use crate::backend::pool::AdminState;
use crate::daemon::reload::Resolver;

/// Long enough that only a deadlock reaches it.
const PATIENCE: Duration = Duration::from_secs(10);

/// A resolver whose lookups answer `127.0.0.1:PORT` at once, or, while
/// stalling, wait until the test releases them (a DNS server that does not
/// answer, without the five-second timeout).
#[derive(Clone)]
struct StallingResolver {
    stalling: Arc<AtomicBool>,
    stalled: Arc<Notify>,
    release: Arc<Semaphore>,
}

impl StallingResolver {
    fn new() -> StallingResolver {
        StallingResolver {
            stalling: Arc::new(AtomicBool::new(false)),
            stalled: Arc::new(Notify::new()),
            release: Arc::new(Semaphore::new(0)),
        }
    }

    fn resolver(&self) -> Resolver {
        let this = self.clone();
        Resolver::new(move |_host, port| {
            let this = this.clone();
            async move {
                if this.stalling.load(SeqCst) {
                    this.stalled.notify_one();
                    let _ = this.release.acquire().await;
                }
                Ok(vec![SocketAddr::from(([127, 0, 0, 1], port))])
            }
        })
    }
}

/// A daemon serving `config` (written to a file in `dir`, so reloads read it).
async fn start(dir: &Path, config: &str, resolver: Resolver) -> Daemon {
    let path = dir.join("lbd.toml");
    std::fs::write(&path, config).unwrap();
    let config = Config::parse(&path, config).unwrap();
    Daemon::start_with_warnings(
        &path,
        config,
        Vec::new(),
        InheritedListeners::default(),
        resolver,
    )
    .await
    .unwrap()
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lbd-daemon-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One frontend in front of one DNS-named server `cp` (on a port where
/// nothing answers: health does not matter here).
fn dns_config() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n\n\
         [[frontend]]\nname = \"api\"\nlisten = [\"127.0.0.1:0\"]\nbackend = \"pool\"\n\n\
         [[backend]]\nname = \"pool\"\nservers = [{{ name = \"cp\", address = \"cp.lbd.test:{port}\" }}]\n"
    )
}

#[tokio::test]
async fn reloads_and_admin_changes_do_not_wait_for_a_dns_refresh_s_lookups() {
    let dir = temp_dir("stall");
    let dns = StallingResolver::new();
    let daemon = start(&dir, &dns_config(), dns.resolver()).await;

    // A periodic refresh meets a resolver that does not answer.
    dns.stalling.store(true, SeqCst);
    let refresh = tokio::spawn({
        let daemon = daemon.clone();
        async move { daemon.refresh_dns().await }
    });
    dns.stalled.notified().await;
    dns.stalling.store(false, SeqCst);

    // Meanwhile an operator drains the server and reloads: neither waits.
    let drained = tokio::time::timeout(PATIENCE, daemon.set_admin("pool", "cp", AdminState::Drain))
        .await
        .expect("set_admin waited for the DNS refresh's lookups");
    assert_eq!(drained.unwrap().len(), 1);
    let reloaded = tokio::time::timeout(PATIENCE, daemon.reload())
        .await
        .expect("the reload waited for the DNS refresh's lookups");
    assert!(reloaded.is_ok(), "{reloaded:?}");

    // The stalled refresh ends: the reload swapped another config in
    // meanwhile, so the refresh leaves it alone.
    dns.release.add_permits(1);
    let refreshed = tokio::time::timeout(PATIENCE, refresh).await.unwrap();
    assert!(matches!(refreshed, Ok(Ok(false))), "{refreshed:?}");
    let snapshot = daemon.snapshot();
    let cp = snapshot.server("pool", "cp@127.0.0.1").unwrap();
    assert_eq!(cp.admin(), AdminState::Drain, "the drain survived");

    daemon.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn an_admin_change_waits_for_a_snapshot_swap_in_progress() {
    let dir = temp_dir("swap");
    let daemon = start(&dir, &dns_config(), StallingResolver::new().resolver()).await;
    let swapping = daemon.shared.reload_lock.lock().await;
    let change = tokio::spawn({
        let daemon = daemon.clone();
        async move { daemon.set_admin("pool", "cp", AdminState::Disabled).await }
    });
    // The change cannot land while a reload holds the servers it may replace.
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!change.is_finished(), "set_admin ran during a swap");
    assert_eq!(
        daemon.snapshot().pools[0].servers[0].admin(),
        AdminState::Ready
    );
    drop(swapping);
    let changed = tokio::time::timeout(PATIENCE, change)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(changed.unwrap()[0].previous, AdminState::Ready);
    daemon.shutdown().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn nothing_is_reloaded_or_refreshed_once_shutdown_began() {
    let dir = temp_dir("shutdown");
    let daemon = start(&dir, &dns_config(), StallingResolver::new().resolver()).await;
    daemon.shutdown().await;
    assert!(matches!(
        daemon.reload().await,
        Err(ReloadError::ShuttingDown)
    ));
    assert!(matches!(
        daemon.refresh_dns().await,
        Err(ReloadError::ShuttingDown)
    ));
    assert!(daemon.last_reload().ok, "a refusal is not the file's fault");
    assert_eq!(daemon.reload_counts(), (0, 0));
    let _ = std::fs::remove_dir_all(dir);
}
