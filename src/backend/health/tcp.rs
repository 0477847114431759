//! The `tcp` check: can a connection be opened? kubeadm's own HA guide uses
//! this check on :6443; it proves the port is open, not that the apiserver
//! is ready.

use std::net::SocketAddr;
use std::time::Duration;

use super::{Alive, CheckError};
use crate::net::{dial, socket};

/// Connects to `addr` within `timeout` and closes at once.
///
/// The connection is closed with RST rather than FIN: lbd then keeps no
/// TIME_WAIT socket per check (HAProxy closes its checks the same way).
pub async fn check(addr: SocketAddr, timeout: Duration) -> Result<Alive, CheckError> {
    let stream = dial::connect(addr, timeout).await?;
    socket::reset(stream);
    Ok(Alive::Ok(format!("connected to {addr}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::dial::DialErrorKind;

    #[tokio::test]
    async fn open_port_passes_and_closed_port_is_refused() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        assert!(matches!(
            check(addr, Duration::from_secs(1)).await,
            Ok(Alive::Ok(_))
        ));
        drop(listener);
        match check(addr, Duration::from_secs(1)).await {
            Err(CheckError::Dial(e)) => assert_eq!(e.kind, DialErrorKind::Refused),
            other => panic!("expected refused, got {other:?}"),
        }
    }
}
