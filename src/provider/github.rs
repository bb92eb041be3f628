//! GitHub (github.com, and Enterprise Server through `url`): `owner/repo` paths; git over HTTPS takes Basic
//! auth only, with `x-access-token` as the user for every token type.

use super::{Forge, GitAuth};
use crate::config::Secret;

pub struct Github;

impl Forge for Github {
    fn default_url(&self) -> Option<&'static str> {
        Some("https://github.com")
    }
    fn clone_url(&self, base: &str, path: &str) -> String {
        format!("{base}/{}.git", path.trim_end_matches(".git"))
    }
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth {
        GitAuth::Basic {
            username: username.unwrap_or("x-access-token").to_string(),
            password: token,
        }
    }
}
