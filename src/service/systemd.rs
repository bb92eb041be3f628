//! The systemd notify protocol (`sd_notify`), without libsystemd: readiness, status, watchdog pings, reload
//! and stop notifications sent as datagrams to `$NOTIFY_SOCKET`. Everything is a no-op when the service is
//! not started by systemd with `Type=notify`.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Where notifications go, if anywhere.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    socket: Option<(UnixDatagram, NotifyAddr)>,
    watchdog: Option<Duration>,
}

#[derive(Debug)]
enum NotifyAddr {
    Path(std::path::PathBuf),
    Abstract(Vec<u8>),
}

impl Notifier {
    /// Read `$NOTIFY_SOCKET` and `$WATCHDOG_USEC` (honouring `$WATCHDOG_PID` when set).
    pub(crate) fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET").and_then(|s| {
            let s = s.to_string_lossy().into_owned();
            let addr = match s.strip_prefix('@') {
                Some(name) => NotifyAddr::Abstract(name.as_bytes().to_vec()),
                None if s.starts_with('/') => NotifyAddr::Path(s.into()),
                None => return None,
            };
            // Non-blocking: a notification the manager is too slow to take is dropped, never waited
            // for (a blocked send would stall the supervisor, and with it the watchdog and shutdown).
            UnixDatagram::unbound()
                .and_then(|sock| sock.set_nonblocking(true).map(|()| sock))
                .ok()
                .map(|sock| (sock, addr))
        });
        let for_us = std::env::var("WATCHDOG_PID")
            .ok()
            .and_then(|p| p.parse::<u32>().ok())
            .is_none_or(|pid| pid == std::process::id());
        let watchdog = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|u| u.parse::<u64>().ok())
            .filter(|u| *u > 0 && for_us)
            .map(Duration::from_micros);
        Notifier { socket, watchdog }
    }

    /// How often to ping the watchdog (half its timeout), if systemd asked for pings.
    pub(crate) fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog.map(|w| w / 2)
    }

    /// Send one notification (`READY=1`, `STATUS=…`, …). Failures are logged, never fatal.
    pub(crate) fn send(&self, message: &str) {
        let Some((sock, addr)) = &self.socket else {
            return;
        };
        let sent = match addr {
            NotifyAddr::Path(p) => sock.send_to(message.as_bytes(), p),
            NotifyAddr::Abstract(name) => {
                use std::os::linux::net::SocketAddrExt;
                std::os::unix::net::SocketAddr::from_abstract_name(name)
                    .and_then(|a| sock.send_to_addr(message.as_bytes(), &a))
            }
        };
        if let Err(e) = sent {
            tracing::debug!("sd_notify {message:?}: {e}");
        }
    }

    pub(crate) fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={status}"));
    }

    pub(crate) fn status(&self, status: &str) {
        self.send(&format!("STATUS={status}"));
    }

    pub(crate) fn watchdog(&self) {
        self.send("WATCHDOG=1");
    }

    /// `RELOADING=1` with the monotonic timestamp systemd 253+ asks for.
    pub(crate) fn reloading(&self) {
        self.send(&format!("RELOADING=1\nMONOTONIC_USEC={}", monotonic_usec()));
    }

    pub(crate) fn stopping(&self) {
        self.send("STOPPING=1");
    }
}

/// `CLOCK_MONOTONIC` now, in microseconds (what systemd compares `MONOTONIC_USEC` with).
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the struct we pass and reads nothing else.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return 0;
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000
        + u64::try_from(ts.tv_nsec).unwrap_or(0) / 1_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_datagram_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some((UnixDatagram::unbound().unwrap(), NotifyAddr::Path(path))),
            watchdog: Some(Duration::from_secs(10)),
        };
        n.ready("2 repos");
        let mut buf = [0u8; 256];
        let len = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\nSTATUS=2 repos");
        n.reloading();
        let len = server.recv(&mut buf).unwrap();
        assert!(
            std::str::from_utf8(&buf[..len])
                .unwrap()
                .starts_with("RELOADING=1\nMONOTONIC_USEC=")
        );
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        Notifier::default().ready("nothing happens without a socket");
    }
}
