//! Several instances on one PostgreSQL database. Each instance beats a heartbeat on the supervisor's tick
//! and keeps the list of live ones. A repository is polled by the live instance it prefers (rendezvous
//! hashing: the highest hash of repository and instance name), so each of N instances polls about 1/N of
//! the repositories, the same ones from poll to poll (its mirrors stay warm), and when an instance dies only
//! its repositories move, spread over the others. Before polling, an instance takes the repository's lease
//! (a row with owner and expiry, see `store::leases`); it renews the lease while the poll runs and gives it
//! back after. A webhook nudge is polled by the instance that received it, if no other instance holds the
//! lease. With SQLite there is one instance: every lease is granted without a write.

use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::state::Shared;
use crate::store::Store;

/// This instance's view of the others.
pub(crate) struct Instances {
    /// When this process started (its `instances` row).
    started_at: String,
    /// The live instances' names, sorted, as of the last heartbeat (this one alone before the first).
    live: Mutex<Vec<String>>,
}

impl Instances {
    pub(crate) fn new(me: &str) -> Instances {
        Instances {
            started_at: crate::store::now_rfc3339_millis(),
            live: Mutex::new(vec![me.to_string()]),
        }
    }

    fn live(&self) -> Vec<String> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The live instance that should poll `key`: the highest hash of (key, instance).
pub(crate) fn preferred<'a>(key: &str, live: &'a [String]) -> Option<&'a str> {
    live.iter()
        .max_by_key(|name| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (key, name.as_str()).hash(&mut h);
            h.finish()
        })
        .map(String::as_str)
}

/// Beat the heartbeat and refresh the live instances; the repositories (among `repos`) this instance now
/// prefers and did not before, for an instance that stopped beating: their polls start now.
pub(super) fn heartbeat(shared: &Shared, repos: &[String]) -> Vec<String> {
    let config = shared.config();
    let me = config.instance_name.as_str();
    let now = match shared
        .store
        .heartbeat(me, &shared.instances.started_at, config.lease_seconds)
    {
        Ok(live) => live,
        Err(e) => {
            tracing::warn!("cannot record this instance's heartbeat: {e}");
            return Vec::new();
        }
    };
    let before = std::mem::replace(
        &mut *shared
            .instances
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
        now.clone(),
    );
    if before == now {
        return Vec::new();
    }
    tracing::info!(instances = ?now, "the live instances changed");
    repos
        .iter()
        .filter(|r| preferred(r, &now) == Some(me) && preferred(r, &before) != Some(me))
        .cloned()
        .collect()
}

/// A lease held by this instance: renewed in the background, given back when dropped.
pub(super) struct Lease {
    store: Arc<Store>,
    name: String,
    owner: String,
    renewing: tokio::task::JoinHandle<()>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.renewing.abort();
        let (store, name, owner) = (self.store.clone(), self.name.clone(), self.owner.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = store.release(&name, &owner) {
                tracing::warn!("cannot give the lease on {name} back (it expires by itself): {e}");
            }
        });
    }
}

/// Take the lease `name` for this instance: `None` when another instance should poll it (`any`: this one
/// may, for a webhook it received) or holds it now.
pub(super) async fn take(shared: &Arc<Shared>, name: &str, any: bool) -> Option<Lease> {
    let config = shared.config();
    let me = config.instance_name.clone();
    if !any && preferred(name, &shared.instances.live()) != Some(me.as_str()) {
        return None;
    }
    let secs = config.lease_seconds;
    let (store, key, owner) = (shared.store.clone(), name.to_string(), me.clone());
    let claimed = tokio::task::spawn_blocking(move || store.claim(&key, &owner, secs)).await;
    match claimed {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) => return None,
        Ok(Err(e)) => {
            tracing::warn!("cannot take the lease on {name}: {e}");
            return None;
        }
        Err(_) => return None,
    }
    let (store, key, owner) = (shared.store.clone(), name.to_string(), me.clone());
    let renewing = tokio::spawn(async move {
        let every = Duration::from_secs(secs / 3).max(Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            let (s, k, o) = (store.clone(), key.clone(), owner.clone());
            match tokio::task::spawn_blocking(move || s.claim(&k, &o, secs)).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    tracing::error!(
                        "the lease on {key} was lost to another instance while this one works on it"
                    );
                }
                Ok(Err(e)) => tracing::warn!("cannot renew the lease on {key}: {e}"),
                Err(_) => return,
            }
        }
    });
    Some(Lease {
        store: shared.store.clone(),
        name: name.to_string(),
        owner: me,
        renewing,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each of three instances prefers about a third of 600 repositories; when one goes, only its
    /// repositories move.
    #[test]
    fn preference_spreads_repositories_and_moves_only_a_lost_instances() {
        let live: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let repos: Vec<String> = (0..600).map(|i| format!("p/group/repo{i}")).collect();
        let owner = |r: &str, live: &[String]| preferred(r, live).unwrap().to_string();
        for name in &live {
            let n = repos.iter().filter(|r| owner(r, &live) == *name).count();
            assert!((140..=260).contains(&n), "{name} prefers {n} of 600");
        }
        let two = vec!["a".to_string(), "c".to_string()];
        for r in &repos {
            if owner(r, &live) != "b" {
                assert_eq!(owner(r, &live), owner(r, &two), "{r} moved");
            }
        }
    }
}
