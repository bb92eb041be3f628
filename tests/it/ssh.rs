//! Fetching over ssh: a real OpenSSH server on 127.0.0.1 with its own host key and authorized key,
//! modelmirror configured with `ssh_key_file` and `known_hosts_file`; plus a wrong host key and an
//! unauthorized client key, which must fail promptly with a clear message.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::git_http::Auth;
use crate::support::*;

const SSHD: &str = "/usr/sbin/sshd";
/// Upper bound for one `modelmirror sync` over ssh: a hang is a failure, not a stuck test run.
const SYNC_DEADLINE: Duration = Duration::from_secs(60);

/// The ssh tests start sshd, which must run as root to log a user in. Fail (never skip) when that is not
/// possible, saying what is missing.
fn require_root_and_sshd() {
    // SAFETY: geteuid(2) has no preconditions and no memory effects.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the ssh tests start a real sshd and must run as root (they run as uid {euid})"
    );
    assert!(
        Path::new(SSHD).is_file(),
        "{SSHD} is missing: install it with `apt-get install openssh-server openssh-client`"
    );
    // sshd refuses to start without its privilege separation folder, which only the packaged service
    // creates.
    let privsep = Path::new("/run/sshd");
    if !privsep.is_dir() {
        std::fs::create_dir_all(privsep).expect("create /run/sshd");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(privsep, std::fs::Permissions::from_mode(0o755))
            .expect("chmod /run/sshd");
    }
}

/// A new ed25519 key pair without passphrase at `path` (private) and `path.pub`; returns the public
/// key as `type base64`.
fn keygen(path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .args([
            "-q",
            "-t",
            "ed25519",
            "-N",
            "",
            "-C",
            "modelmirror-test",
            "-f",
        ])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("ssh-keygen runs (apt-get install openssh-client)");
    assert!(
        out.status.success(),
        "ssh-keygen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let public = std::fs::read_to_string(path.with_extension("pub")).expect("read public key");
    let mut fields = public.split_whitespace();
    format!(
        "{} {}",
        fields.next().expect("key type"),
        fields.next().expect("key data")
    )
}

fn current_user() -> String {
    let out = Command::new("whoami").output().expect("whoami runs");
    assert!(out.status.success(), "whoami failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A real sshd on 127.0.0.1 that lets the current user in with one client key; killed on drop.
struct Sshd {
    dir: TempDir,
    child: Child,
    port: u16,
    user: String,
    /// The server's host key, `type base64`.
    host_key: String,
    /// The authorized client key (private).
    client_key: PathBuf,
}

impl Sshd {
    fn start() -> Sshd {
        require_root_and_sshd();
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let host_key = keygen(&d.join("host_ed25519"));
        let client_key = d.join("client_ed25519");
        let client_public = keygen(&client_key);
        std::fs::write(d.join("authorized_keys"), format!("{client_public}\n"))
            .expect("write authorized_keys");
        // The port is found by binding port 0 and releasing it; another process may take it in between, so
        // try a few times.
        let mut failures = Vec::new();
        for _ in 0..5 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .expect("bind 127.0.0.1:0")
                .local_addr()
                .expect("local addr")
                .port();
            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\n\
                     ListenAddress 127.0.0.1\n\
                     HostKey {host}\n\
                     PidFile {pid}\n\
                     AuthorizedKeysFile {auth}\n\
                     PubkeyAuthentication yes\n\
                     PasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\n\
                     PermitRootLogin prohibit-password\n\
                     StrictModes no\n\
                     UsePAM no\n\
                     LogLevel VERBOSE\n",
                    host = d.join("host_ed25519").display(),
                    pid = d.join("sshd.pid").display(),
                    auth = d.join("authorized_keys").display(),
                ),
            )
            .expect("write sshd_config");
            let log = d.join("sshd.log");
            let mut child = Command::new(SSHD)
                .args(["-D", "-e", "-f"])
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(&log).expect("create sshd.log"))
                .spawn()
                .expect("start sshd");
            match wait_listening(&mut child, &log) {
                Ok(()) => {
                    return Sshd {
                        dir,
                        child,
                        port,
                        user: current_user(),
                        host_key,
                        client_key,
                    };
                }
                Err(message) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    failures.push(message);
                }
            }
        }
        panic!("sshd did not start:\n{}", failures.join("\n---\n"));
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The clone URL of a bare repository (absolute path) on this server.
    fn url(&self, bare: &Path) -> String {
        format!(
            "ssh://{}@127.0.0.1:{}{}",
            self.user,
            self.port,
            bare.display()
        )
    }

    /// A known_hosts file holding `key` for this server's address and port.
    fn known_hosts(&self, name: &str, key: &str) -> PathBuf {
        let p = self.path().join(name);
        std::fs::write(&p, format!("[127.0.0.1]:{} {key}\n", self.port))
            .expect("write known_hosts");
        p
    }
}

/// Wait until sshd logs that it listens; an error with its log when it exits or takes too long.
fn wait_listening(child: &mut Child, log: &Path) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    let read = || std::fs::read_to_string(log).unwrap_or_default();
    loop {
        if read().contains("Server listening on") {
            return Ok(());
        }
        if let Some(status) = child.try_wait().expect("try_wait sshd") {
            return Err(format!("sshd exited with {status}:\n{}", read()));
        }
        if Instant::now() > deadline {
            return Err(format!("sshd did not listen within 15 s:\n{}", read()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A repository with one model, served by `sshd`, and a config that mirrors it over ssh with the given key
/// files. Returns the bare repository, its working clone and its repository id.
fn ssh_repo(env: &Env, sshd: &Sshd, key: &Path, known_hosts: &Path) -> (PathBuf, PathBuf, String) {
    let (bare, work) = env.new_repo("ssh/models.git");
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
        work.join("m.hck.json"),
    )
    .expect("copy fixture");
    commit_all(&work, "first model");
    env.write_config(&format!(
        "[providers.s]\nkind = \"git\"\nssh_key_file = {:?}\nknown_hosts_file = {:?}\nrepos = [{:?}]\n",
        key.to_string_lossy(),
        known_hosts.to_string_lossy(),
        sshd.url(&bare)
    ));
    let path = bare.to_string_lossy();
    let id = format!(
        "s/{}",
        path.trim_start_matches('/').trim_end_matches(".git")
    );
    (bare, work, id)
}

/// `modelmirror sync` with a deadline (killed and failed past it); also returns how long it took.
fn sync_bounded(env: &Env, sshd: &Sshd) -> (Run, Duration) {
    let out = env.path().join("sync.out");
    let err = env.path().join("sync.err");
    let started = Instant::now();
    let mut child = bin()
        .arg("--config")
        .arg(env.path().join("config.toml"))
        .arg("sync")
        // Nothing from the user's own ssh setup may take part.
        .env("HOME", env.path())
        .env_remove("SSH_AUTH_SOCK")
        .stdout(std::fs::File::create(&out).expect("create sync.out"))
        .stderr(std::fs::File::create(&err).expect("create sync.err"))
        .spawn()
        .expect("modelmirror runs");
    let deadline = started + SYNC_DEADLINE;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "modelmirror sync over ssh did not finish within {SYNC_DEADLINE:?}\nstdout: {}\nstderr: {}\nsshd log:\n{}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default(),
                sshd.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let run = Run {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(&out).expect("read sync.out"),
        stderr: std::fs::read_to_string(&err).expect("read sync.err"),
    };
    (run, started.elapsed())
}

#[test]
fn fetches_over_ssh_with_key_and_known_hosts() {
    let sshd = Sshd::start();
    let env = Env::new(Auth::None);
    let known_hosts = sshd.known_hosts("known_hosts", &sshd.host_key);
    let (bare, work, id) = ssh_repo(&env, &sshd, &sshd.client_key, &known_hosts);
    let head = git(&bare, &["rev-parse", "main"]).trim().to_string();

    let (run, _) = sync_bounded(&env, &sshd);
    assert_eq!(run.code, 0, "{run:#?}\nsshd log:\n{}", sshd.log());
    assert!(
        run.stdout.starts_with(&format!("{id} updated: ")),
        "{}",
        run.stdout
    );
    let db = env.db();
    assert_eq!(processed_commit(&db, &id).as_deref(), Some(head.as_str()));
    assert_catalog_is(&bare, &db, &id, &head, u64::MAX);
    drop(db);

    // A second commit arrives through the same connection settings; then nothing changes.
    std::fs::copy(
        fixtures().join("models/books/MongoDB__Figure 006 - Subtyping.hck.json"),
        work.join("copy.hck.json"),
    )
    .expect("copy fixture");
    std::fs::remove_file(work.join("m.hck.json")).expect("remove model");
    let second = commit_all(&work, "rename the model");
    let (run, _) = sync_bounded(&env, &sshd);
    assert_eq!(run.code, 0, "{run:#?}\nsshd log:\n{}", sshd.log());
    let db = env.db();
    assert_eq!(processed_commit(&db, &id).as_deref(), Some(second.as_str()));
    assert_catalog_is(&bare, &db, &id, &second, u64::MAX);
    let (run, _) = sync_bounded(&env, &sshd);
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(
        run.stdout.starts_with(&format!("{id} unchanged")),
        "{}",
        run.stdout
    );
    assert!(
        sshd.log().contains("Accepted publickey for"),
        "sshd did not log the key login:\n{}",
        sshd.log()
    );
}

#[test]
fn a_host_key_not_in_known_hosts_is_refused() {
    let sshd = Sshd::start();
    let env = Env::new(Auth::None);
    let other = keygen(&sshd.path().join("other_host_ed25519"));
    let known_hosts = sshd.known_hosts("known_hosts_other", &other);
    let (_, _, id) = ssh_repo(&env, &sshd, &sshd.client_key, &known_hosts);

    let (run, took) = sync_bounded(&env, &sshd);
    assert_eq!(run.code, 1, "{run:#?}");
    let line = run.stdout.trim();
    assert!(line.starts_with(&format!("{id} error: ")), "{line}");
    assert!(
        line.contains("host key") && line.contains("127.0.0.1"),
        "the error must name the host key and the host: {line}"
    );
    assert!(
        line.contains(&known_hosts.display().to_string()),
        "the error must name the known_hosts file: {line}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert_eq!(processed_commit(&env.db(), &id), None);
    assert!(
        !sshd.log().contains("Accepted publickey for"),
        "the client logged in to a server it does not trust:\n{}",
        sshd.log()
    );
}

#[test]
fn an_unauthorized_client_key_fails_promptly() {
    let sshd = Sshd::start();
    let env = Env::new(Auth::None);
    let stranger = env.path().join("stranger_ed25519");
    keygen(&stranger);
    let known_hosts = sshd.known_hosts("known_hosts", &sshd.host_key);
    let (_, _, id) = ssh_repo(&env, &sshd, &stranger, &known_hosts);

    let (run, took) = sync_bounded(&env, &sshd);
    assert_eq!(run.code, 1, "{run:#?}\nsshd log:\n{}", sshd.log());
    let line = run.stdout.trim();
    assert!(line.starts_with(&format!("{id} error: ")), "{line}");
    assert!(
        line.contains("authentication failed"),
        "the error must say authentication failed: {line}\nsshd log:\n{}",
        sshd.log()
    );
    assert!(
        line.contains(&*stranger.to_string_lossy()),
        "the error names the refused key file: {line}"
    );
    assert!(
        took < Duration::from_secs(30),
        "an unauthorized key must fail promptly, took {took:?}"
    );
    assert_eq!(processed_commit(&env.db(), &id), None);
}
