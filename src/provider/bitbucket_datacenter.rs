//! Bitbucket Data Center / Server: `PROJECT/repo` paths cloned from `<url>/scm/PROJECT/repo.git`; HTTP access
//! tokens are sent as `Authorization: Bearer` (the only form project and repository tokens accept), or as
//! Basic auth when a `username` is configured.

use super::{Forge, GitAuth};
use crate::config::Secret;

pub struct BitbucketDatacenter;

impl Forge for BitbucketDatacenter {
    fn default_url(&self) -> Option<&'static str> {
        None
    }
    fn clone_url(&self, base: &str, path: &str) -> String {
        format!("{base}/scm/{}.git", path.trim_end_matches(".git"))
    }
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth {
        match username {
            Some(u) => GitAuth::Basic {
                username: u.to_string(),
                password: token,
            },
            None => GitAuth::Bearer(token),
        }
    }
}
