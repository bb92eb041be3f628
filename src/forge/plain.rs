//! Any Git server (`kind = "git"`): `repos` are full clone URLs (https, ssh or file) or paths relative to
//! `url`; Basic auth with `username` + token when a token is given.

use super::Forge;
use crate::git::GitAuth;
use crate::secret::Secret;

pub(crate) struct PlainGit;

impl Forge for PlainGit {
    fn default_url(&self) -> Option<&'static str> {
        None
    }
    fn clone_url(&self, base: &str, path: &str) -> String {
        // A plain server's URL is taken as written: some serve `name.git`, some `name`.
        format!("{base}/{path}")
    }
    fn git_auth(&self, username: Option<&str>, token: Secret) -> GitAuth {
        GitAuth::Basic {
            username: username.unwrap_or("git").to_string(),
            password: token,
        }
    }
    fn accepts_urls(&self) -> bool {
        true
    }
    fn repo_page(&self, _base: &str, _path: &str) -> Option<String> {
        // A plain server's URL is a clone URL, not a web page.
        None
    }
}
