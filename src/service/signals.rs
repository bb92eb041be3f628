//! Signals and configuration changes turned into [`Control`] messages for the supervisor.

use std::time::Duration;

use tokio::sync::mpsc;

use super::state::Control;

/// Turn signals into [`Control`]: SIGTERM and SIGINT shut down (a second one exits at once), SIGHUP
/// reloads.
pub(crate) async fn signals(control: mpsc::Sender<Control>) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the service with SIGKILL");
        return;
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => {
                let _ = control.send(Control::Reload("SIGHUP".into())).await;
            }
        }
    }
    let _ = control.send(Control::Shutdown).await;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::warn!("second signal: exiting at once");
    std::process::exit(1);
}

/// Resolves on the first SIGINT or SIGTERM (for one-shot commands); a second one exits at once.
pub(crate) async fn shutdown_signal() {
    let (tx, mut rx) = mpsc::channel(4);
    tokio::spawn(signals(tx));
    while let Some(c) = rx.recv().await {
        if c == Control::Shutdown {
            return;
        }
    }
}

/// Watch the configuration file's folder and `conf.d/` and ask for a reload when a `.toml` file changes.
/// Events are debounced (editors write a temporary file and rename it over the old one), so one save is one
/// reload. Returns the watcher, which must be kept alive.
pub(crate) fn watch_config(
    config_path: &std::path::Path,
    control: mpsc::Sender<Control>,
) -> Option<notify::RecommendedWatcher> {
    use notify::{RecursiveMode, Watcher};
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let main_name = config_path.file_name().map(|n| n.to_os_string());
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        let Ok(event) = res else { return };
        if matches!(event.kind, notify::EventKind::Access(_)) {
            return;
        }
        let relevant = event.paths.iter().any(|p| {
            p.extension().is_some_and(|e| e == "toml")
                || (main_name.is_some() && p.file_name() == main_name.as_deref())
        });
        if relevant {
            let _ = tx.send(());
        }
    })
    .map_err(|e| {
        tracing::warn!("cannot watch the configuration for changes (SIGHUP still reloads): {e}")
    })
    .ok()?;
    let dir = config_path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    if let Err(e) = watcher.watch(dir, RecursiveMode::NonRecursive) {
        tracing::warn!("cannot watch {} (SIGHUP still reloads): {e}", dir.display());
        return None;
    }
    let conf_d = dir.join("conf.d");
    if conf_d.is_dir()
        && let Err(e) = watcher.watch(&conf_d, RecursiveMode::NonRecursive)
    {
        tracing::warn!(
            "cannot watch {} (SIGHUP still reloads): {e}",
            conf_d.display()
        );
    }
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Debounce: wait for a quiet half second.
            loop {
                match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
                    Ok(Some(())) => continue,
                    Ok(None) => return,
                    Err(_) => break,
                }
            }
            if control
                .send(Control::Reload("configuration files changed".into()))
                .await
                .is_err()
            {
                return;
            }
        }
    });
    Some(watcher)
}
