//! Several instances on one PostgreSQL database. Each instance beats a heartbeat every tick, on a task of
//! its own, and keeps the list of live ones. A repository is polled by the live instance it prefers
//! (rendezvous hashing: the highest hash of repository and instance name), so each of N instances polls
//! about 1/N of the repositories, the same ones from poll to poll (its mirrors stay warm), and when an
//! instance dies only its repositories move, spread over the others. Before polling, an instance takes the
//! repository's lease (a row with owner, process token and expiry, see `store::leases`); it renews the lease
//! while the poll runs and gives it back after. A webhook nudge is passed on (`NOTIFY`) to the instance that
//! prefers the repository. With SQLite there is one instance: every lease is granted without
//! a write.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::state::{Nudge, Shared};
use crate::store::{Holder, Store, StoreError};

/// This instance's view of the others.
pub(crate) struct Instances {
    /// When this process started (its `instances` row).
    started_at: String,
    /// This process, in its leases: two processes never share a token, even under one `instance_name`.
    pub(super) token: String,
    /// The live instances' names, sorted, as of the last heartbeat (this one alone before the first).
    live: Mutex<Vec<String>>,
}

impl Instances {
    pub(crate) fn new(me: &str) -> Instances {
        Instances {
            token: new_token(),
            started_at: crate::store::now_rfc3339_millis(),
            live: Mutex::new(vec![me.to_string()]),
        }
    }

    fn live(&self) -> Vec<String> {
        self.live.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A token no other process has: the process id and start time (for whoever reads the table) and 16 random
/// bytes (containers started together share both).
pub(super) fn new_token() -> String {
    let mut random = [0u8; 16];
    if openssl::rand::rand_bytes(&mut random).is_err() {
        // No randomness to be had (never seen): the clock's nanoseconds stand in.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        random.copy_from_slice(&nanos.to_le_bytes());
    }
    let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{hex}",
        std::process::id(),
        crate::store::now_rfc3339_millis()
    )
}

/// FNV-1a, 64 bits, then MurmurHash3's finaliser (FNV alone mixes the last bytes poorly): a hash every
/// build agrees on (instances built apart must prefer alike).
fn fnv(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for b in part.bytes().chain(std::iter::once(0)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// The live instance that should poll `key`: the highest hash of (key, instance).
pub(crate) fn preferred<'a>(key: &str, live: &'a [String]) -> Option<&'a str> {
    live.iter()
        .max_by_key(|name| fnv(&[key, name]))
        .map(String::as_str)
}

/// Beat the heartbeat; refresh the live instances; return the repositories (among `repos`) this instance
/// prefers now and did not before (an instance stopped beating: their polls start at once).
/// `settling`: the first beat after beats failed (the database was out of reach). The others may not
/// have beaten again yet, so the list is not taken up (this instance would take nearly everything over);
/// the next beat compares with the list from before.
pub(super) fn heartbeat(
    shared: &Shared,
    repos: &[String],
    settling: bool,
) -> Result<Vec<String>, crate::store::StoreError> {
    let config = shared.config();
    let me = config.instance_name.as_str();
    let holder = Holder {
        name: me,
        token: &shared.instances.token,
    };
    let now =
        shared
            .store
            .heartbeat(&holder, &shared.instances.started_at, config.lease_seconds)?;
    if settling {
        return Ok(Vec::new());
    }
    let before = std::mem::replace(
        &mut *shared
            .instances
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner()),
        now.clone(),
    );
    if before == now {
        return Ok(Vec::new());
    }
    tracing::info!(instances = ?now, "the live instances changed");
    Ok(repos
        .iter()
        .filter(|r| preferred(r, &now) == Some(me) && preferred(r, &before) != Some(me))
        .cloned()
        .collect())
}

/// The first heartbeat, at start (the instance known to the others, and they to it, before its first
/// polls). When another process beat last under this instance_name within `lease_seconds`, wait: if it beats
/// again within two heartbeats (`every`), it runs, and this start is refused; if not, it was stopped
/// without retiring (killed, its host lost) and this process takes the name over.
pub(super) async fn join(shared: &Arc<Shared>, every: Duration) -> Result<(), StoreError> {
    let first = shared.clone();
    let beat = tokio::task::spawn_blocking(move || heartbeat(&first, &[], false))
        .await
        .map_err(|e| StoreError::Query(e.to_string()))?;
    let (name, heartbeat_at) = match beat {
        Err(StoreError::InstanceTaken { name, heartbeat_at }) => (name, heartbeat_at),
        other => return other.map(drop),
    };
    let wait = every * 2 + Duration::from_secs(5);
    tracing::warn!(
        "another process beat as instance_name {name:?} at {heartbeat_at}: waiting {}s to see whether it still runs (one killed without stopping leaves its heartbeat behind)",
        wait.as_secs()
    );
    tokio::time::sleep(wait).await;
    let s = shared.clone();
    let (started_at, seen) = (shared.instances.started_at.clone(), heartbeat_at.clone());
    let took = tokio::task::spawn_blocking(move || {
        let me = Holder {
            name: &name,
            token: &s.instances.token,
        };
        s.store.take_instance(&me, &started_at, &seen)?;
        heartbeat(&s, &[], false).map(drop)
    })
    .await
    .map_err(|e| StoreError::Query(e.to_string()))?;
    if took.is_ok() {
        tracing::info!("took instance_name over from a process that stopped without retiring");
    }
    took
}

/// This process stops: its heartbeat row goes, so the others take its repositories over at once and a
/// restart under the same name is not kept waiting.
pub(super) async fn retire(shared: &Arc<Shared>) {
    let s = shared.clone();
    let retired = tokio::task::spawn_blocking(move || {
        let config = s.config();
        s.store.retire(&Holder {
            name: &config.instance_name,
            token: &s.instances.token,
        })
    })
    .await;
    if let Ok(Err(e)) = retired {
        tracing::warn!(
            "cannot retire this instance (the others take its repositories over once its heartbeat is older than lease_seconds): {e}"
        );
    }
}

/// Beat the heartbeat every `every` until shutdown, on blocking threads (a slow database never holds the
/// supervisor up), and start the polls of repositories taken over from an instance that stopped beating.
/// Another process having taken this instance_name over (this one's heartbeats failed for longer than the
/// newcomer waited) is sent on `displaced`: the service stops.
pub(super) async fn heartbeat_loop(
    shared: Arc<Shared>,
    every: Duration,
    displaced: tokio::sync::mpsc::Sender<StoreError>,
) {
    // Instances started together each know only those that beat before them: two beats soon after the start
    // make them agree before the startup polls (spread over the first 5 s) are shared out.
    let mut soon = [1, 2].into_iter().map(Duration::from_secs);
    let mut failed = false;
    loop {
        tokio::time::sleep(soon.next().unwrap_or(every)).await;
        if shared.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let targets: Vec<(String, Arc<Nudge>)> = shared
            .targets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .repos
            .iter()
            .map(|(id, (_, nudge))| (id.clone(), nudge.clone()))
            .collect();
        let ids: Vec<String> = targets.iter().map(|(id, _)| id.clone()).collect();
        let beat = shared.clone();
        let settling = std::mem::replace(&mut failed, true);
        let taken_over =
            match tokio::task::spawn_blocking(move || heartbeat(&beat, &ids, settling)).await {
                Ok(Ok(taken)) => {
                    failed = false;
                    taken
                }
                Ok(Err(e @ StoreError::InstanceTaken { .. })) => {
                    // Two processes under one name: this one gives way.
                    let _ = displaced.send(e).await;
                    return;
                }
                Ok(Err(e)) => {
                    tracing::error!("cannot record this instance's heartbeat: {e}");
                    continue;
                }
                Err(e) => {
                    tracing::error!(
                        "the heartbeat task failed (a bug in modelmirror, please report it): {e}"
                    );
                    continue;
                }
            };
        for (id, nudge) in &targets {
            if taken_over.contains(id) {
                nudge.take_over();
            }
        }
    }
}

/// Whether this instance still prefers `name` (a poll queued for a slot meanwhile: the live instances may
/// have changed). Always with SQLite.
pub(super) fn still_preferred(shared: &Shared, name: &str) -> bool {
    shared.store.database().sqlite_path().is_some()
        || preferred(name, &shared.instances.live()) == Some(shared.config().instance_name.as_str())
}

/// Pass a webhook's nudge for `repo_id` on to the live instance that prefers it, when that is another one;
/// its name, once passed on (`None`: poll it here).
pub(super) fn pass_on(shared: &Shared, repo_id: &str) -> Option<String> {
    let config = shared.config();
    let live = shared.instances.live();
    let other = preferred(repo_id, &live).filter(|p| *p != config.instance_name)?;
    match shared.store.notify_nudge(other, repo_id) {
        Ok(true) => Some(other.to_string()),
        Ok(false) => None,
        Err(e) => {
            tracing::warn!(
                "cannot pass the nudge for {repo_id} on to instance {other} (polling it here): {e}"
            );
            None
        }
    }
}

/// Hear the nudges other instances pass on to this one, and poll those repositories, until shutdown: on a
/// thread of its own (PostgreSQL `LISTEN`; nothing with SQLite). After the connection was lost and made
/// again, every repository this instance prefers is polled (a nudge sent meanwhile was heard by nobody).
pub(super) fn start_listening(shared: &Arc<Shared>) {
    if shared.store.database().sqlite_path().is_some() {
        return;
    }
    let shared = shared.clone();
    let spawned = std::thread::Builder::new()
        .name("nudges".into())
        .spawn(move || {
            let stop = shared.cancel.clone();
            let again = || {
                let me = shared.config().instance_name.clone();
                let live = shared.instances.live();
                let targets = shared.targets.lock().unwrap_or_else(|p| p.into_inner());
                let mine: Vec<_> = targets
                    .repos
                    .iter()
                    .filter(|(id, _)| preferred(id, &live) == Some(me.as_str()))
                    .collect();
                tracing::info!(
                    "listening for nudges again: polling this instance's {} repositories (a webhook passed on meanwhile may have been lost)",
                    mine.len()
                );
                for (_, (_, nudge)) in mine {
                    nudge.take_over();
                }
            };
            let heard = |to: Option<&str>, repo_id: &str| {
                // For this instance; or for one it does not count live (it went since the sender looked:
                // then the instance that prefers the repository now acts), or unnamed (an older sender).
                let me = shared.config().instance_name.clone();
                let live = shared.instances.live();
                let mine = match to {
                    Some(to) if to == me => true,
                    Some(to) if live.iter().any(|l| l == to) => false,
                    _ => preferred(repo_id, &live) == Some(me.as_str()),
                };
                if !mine {
                    return;
                }
                let targets = shared.targets.lock().unwrap_or_else(|p| p.into_inner());
                match targets.repos.get(repo_id) {
                    Some((_, nudge)) => {
                        tracing::info!(repo = %repo_id, "a webhook received by another instance: polling");
                        nudge.nudge();
                    }
                    None => tracing::info!(
                        repo = %repo_id,
                        "a webhook received by another instance, for a repository this one does not mirror yet: it is polled once this instance reads it from the catalog (discovered by another instance)"
                    ),
                }
            };
            shared.store.listen_nudges(&stop, again, heard);
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start listening for nudges from other instances: {e}");
    }
}

/// A lease held by this process: renewed in the background; given back by [`Lease::release`] (awaited, so
/// the next claim of the same name cannot be undone by it), or when dropped.
pub(super) struct Lease {
    store: Arc<Store>,
    name: String,
    owner: String,
    pub(super) token: String,
    renewing: Option<tokio::task::JoinHandle<()>>,
    released: bool,
    /// The repository's lock in this process (see `Shared::repo_lock`), kept until the lease is given back:
    /// a reload's new loop for the repository cannot claim it before a background give-back deletes it.
    running: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Lease {
    /// Keep the repository's lock until the lease is given back.
    pub(super) fn keep(&mut self, running: tokio::sync::OwnedMutexGuard<()>) {
        self.running = Some(running);
    }

    /// Stop renewing and give the lease back, before the caller goes on; the repository's lock kept with
    /// it (if any) is handed back to the caller.
    pub(super) async fn release(mut self) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        if let Some(r) = self.renewing.take() {
            r.abort();
        }
        self.released = true;
        let (store, name, owner, token) = self.parts();
        let _ = tokio::task::spawn_blocking(move || give_back(&store, &name, &owner, &token)).await;
        self.running.take()
    }

    fn parts(&self) -> (Arc<Store>, String, String, String) {
        (
            self.store.clone(),
            self.name.clone(),
            self.owner.clone(),
            self.token.clone(),
        )
    }
}

fn give_back(store: &Store, name: &str, owner: &str, token: &str) {
    if let Err(e) = store.release(name, &Holder { name: owner, token }) {
        tracing::warn!("cannot give the lease on {name} back (it expires by itself): {e}");
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(r) = self.renewing.take() {
            r.abort();
        }
        if self.released {
            return;
        }
        // Dropped without `release` (a poll stopped by shutdown or a reload): given back in the background
        // if a runtime is still there (only this process's own lease row can go: the token), else it
        // expires by itself.
        let (store, name, owner, token) = self.parts();
        let running = self.running.take();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn_blocking(move || {
                give_back(&store, &name, &owner, &token);
                drop(running);
            });
        }
    }
}

/// Why a lease was not taken.
pub(super) enum NotTaken {
    /// Another live instance polls it.
    NotMine,
    /// Another instance holds it now (polling it, or dead and its lease not yet expired).
    Held,
}

/// Take the lease `name` for this process: `None` when another instance should poll it (`any`: this one
/// may, for a webhook it received) or holds it now.
pub(super) async fn take(shared: &Arc<Shared>, name: &str, any: bool) -> Option<Lease> {
    take_or_say(shared, name, any).await.ok()
}

/// [`take`], saying why not.
pub(super) async fn take_or_say(
    shared: &Arc<Shared>,
    name: &str,
    any: bool,
) -> Result<Lease, NotTaken> {
    let config = shared.config();
    let me = config.instance_name.as_str();
    // SQLite: one instance, nothing to take (`try_hold` grants it).
    let sqlite = shared.store.database().sqlite_path().is_some();
    if !sqlite && !any && preferred(name, &shared.instances.live()) != Some(me) {
        return Err(NotTaken::NotMine);
    }
    let token = &shared.instances.token;
    match try_hold(&shared.store, name, me, token, config.lease_seconds).await {
        Ok(Some(lease)) => Ok(lease),
        Ok(None) => Err(NotTaken::Held),
        Err(e) => {
            tracing::warn!("cannot take the lease on {name}: {e}");
            Err(NotTaken::Held)
        }
    }
}

/// Claim the lease `name` for `owner`'s process `token`, on a blocking thread: false when held by another.
async fn claim(
    store: &Arc<Store>,
    name: &str,
    owner: &str,
    token: &str,
    secs: u64,
) -> Result<bool, StoreError> {
    let (store, key, owner, tok) = (
        store.clone(),
        name.to_string(),
        owner.to_string(),
        token.to_string(),
    );
    tokio::task::spawn_blocking(move || {
        store.claim(
            &key,
            &Holder {
                name: &owner,
                token: &tok,
            },
            secs,
        )
    })
    .await
    .map_err(|e| StoreError::Query(format!("taking the lease on {name}: {e}")))?
}

/// Renew a lease just claimed every third of `secs`, until the task is aborted (the lease given back) or
/// the lease is found taken over.
fn renew_while_held(
    store: &Arc<Store>,
    name: &str,
    owner: &str,
    token: &str,
    secs: u64,
) -> tokio::task::JoinHandle<()> {
    let (store, key, owner, tok) = (
        store.clone(),
        name.to_string(),
        owner.to_string(),
        token.to_string(),
    );
    tokio::spawn(async move {
        let every = Duration::from_secs(secs / 3).max(Duration::from_secs(1));
        loop {
            tokio::time::sleep(every).await;
            let (s, k, o, t) = (store.clone(), key.clone(), owner.clone(), tok.clone());
            let renewed = tokio::task::spawn_blocking(move || {
                s.renew(
                    &k,
                    &Holder {
                        name: &o,
                        token: &t,
                    },
                    secs,
                )
            })
            .await;
            match renewed {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    tracing::error!(
                        "the lease on {key} was lost while this instance works on it (held past lease_seconds without a renewal); another instance may take it over, and this one writes nothing more of it"
                    );
                    return;
                }
                Ok(Err(e)) => tracing::warn!("cannot renew the lease on {key}: {e}"),
                Err(_) => return,
            }
        }
    })
}

/// For a one-shot `sync` beside running instances (PostgreSQL): the lease `name` for this process, waited
/// for while another holds it (its poll ends, or its lease expires within `lease_seconds`), checking
/// `cancel` every second. `None` with SQLite (nothing to take) and when cancelled; an error when the
/// database cannot be asked.
pub(super) async fn wait_for(
    store: &Arc<Store>,
    name: &str,
    owner: &str,
    token: &str,
    secs: u64,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<Option<Lease>, StoreError> {
    if store.database().sqlite_path().is_some() {
        return Ok(None);
    }
    let mut said = false;
    loop {
        if let Some(lease) = try_hold(store, name, owner, token, secs).await? {
            return Ok(Some(lease));
        }
        if !said {
            tracing::info!(
                "{name} is being polled by a running instance (or one that stopped, until its lease expires): waiting for its lease"
            );
            said = true;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        if cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Ok(None);
        }
    }
}

/// The lease `name` for this process now, renewed until given back; `None` while another holds it. With
/// SQLite, a lease that takes nothing.
pub(super) async fn try_hold(
    store: &Arc<Store>,
    name: &str,
    owner: &str,
    token: &str,
    secs: u64,
) -> Result<Option<Lease>, StoreError> {
    let pg = store.database().sqlite_path().is_none();
    if pg && !claim(store, name, owner, token, secs).await? {
        return Ok(None);
    }
    Ok(Some(Lease {
        store: store.clone(),
        name: name.to_string(),
        owner: owner.to_string(),
        token: token.to_string(),
        renewing: pg.then(|| renew_while_held(store, name, owner, token, secs)),
        released: !pg,
        running: None,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each of three instances prefers about a third of 600 repositories; when one goes, only its
    /// repositories move; the hash is the same in every build.
    #[test]
    fn preference_spreads_repositories_and_moves_only_a_lost_instances() {
        assert_eq!(fnv(&[""]), 0xb9034ad37056f5fb);
        assert_eq!(fnv(&["p/group/repo1", "a"]), 0x85c0115977d53901);
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
