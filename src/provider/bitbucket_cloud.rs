//! Bitbucket Cloud: `workspace/repo` paths; access tokens authenticate git as `x-token-auth`, API tokens and
//! app passwords with the configured `username`.

use super::{Forge, GitAuth};
use crate::config::Secret;

pub struct BitbucketCloud;

impl Forge for BitbucketCloud {
    fn default_url(&self) -> Option<&'static str> {
        Some("https://bitbucket.org")
    }
    fn clone_url(&self, base: &str, path: &str) -> String {
        format!("{base}/{}.git", path.trim_end_matches(".git"))
    }
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth {
        GitAuth::Basic {
            username: username.unwrap_or("x-token-auth").to_string(),
            password: token,
        }
    }
}
