//! GitLab (gitlab.com and self-managed): `group/sub/project` paths; git over HTTPS with username `oauth2`,
//! which works for personal, group, project and OAuth tokens alike.

use super::{Forge, GitAuth};
use crate::config::Secret;

pub struct Gitlab;

impl Forge for Gitlab {
    fn default_url(&self) -> Option<&'static str> {
        Some("https://gitlab.com")
    }
    fn clone_url(&self, base: &str, path: &str) -> String {
        format!("{base}/{}.git", path.trim_end_matches(".git"))
    }
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth {
        GitAuth::Basic {
            username: username.unwrap_or("oauth2").to_string(),
            password: token,
        }
    }
}
