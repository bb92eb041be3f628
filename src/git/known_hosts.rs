//! Checking an ssh server's host key against `known_hosts_file`.

use std::path::Path;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// Check an ssh host key against `known_hosts_file`, as OpenSSH does for plain (non-hashed) entries:
/// `host[,host…] type base64`, where a non-default port is written `[host]:port`.
pub(super) fn check_known_host(
    known_hosts: Option<&Path>,
    host: &str,
    port: u16,
    key: &[u8],
) -> Result<(), String> {
    let Some(path) = known_hosts else {
        return Err(
            "no known_hosts_file is configured for this provider; add one with the server's key"
                .into(),
        );
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let wanted = BASE64.encode(key);
    let names = if port == 22 {
        vec![host.to_string(), format!("[{host}]:22")]
    } else {
        vec![format!("[{host}]:{port}")]
    };
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let (Some(hosts), Some(_kind), Some(b64)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        if hosts.split(',').any(|h| names.iter().any(|n| n == h)) && b64 == wanted {
            return Ok(());
        }
    }
    Err(format!(
        "{} is not listed with this key in {} (hashed entries are not supported; add a plain line from `ssh-keyscan -p {port} {host}`)",
        names[0],
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_hosts_entries_match_host_and_port() {
        let dir = tempfile::tempdir().unwrap();
        let kh = dir.path().join("known_hosts");
        let key = b"\x00\x00\x00\x0bssh-ed25519key-bytes";
        let b64 = BASE64.encode(key);
        std::fs::write(
            &kh,
            format!(
                "# comment\ngit.example.com ssh-ed25519 {b64}\n[10.0.0.1]:2222 ssh-ed25519 {b64}\n"
            ),
        )
        .unwrap();
        let check = |host, port| check_known_host(Some(&kh), host, port, key);
        assert!(check("git.example.com", 22).is_ok());
        assert!(
            check("git.example.com", 2222).is_err(),
            "a plain entry is for port 22 only"
        );
        assert!(check("10.0.0.1", 2222).is_ok());
        assert!(check("10.0.0.1", 22).is_err());
        assert!(check_known_host(Some(&kh), "git.example.com", 22, b"other").is_err());
        assert!(check_known_host(None, "git.example.com", 22, key).is_err());
    }
}
