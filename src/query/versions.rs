//! Reading versions of a model from a repository's local mirror (`show`, `changes`): the mirror is the
//! catalog's source, so any version the history lists can be parsed again in full.

use std::path::PathBuf;

use crate::config::{Config, RepoConfig};
use crate::git::{self, GitError, Oid, Repository};
use crate::model::{FileFilter, Parsed};

/// Why a version cannot be read. Every message names the repository.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VersionError {
    #[error("{repo}: no local mirror at {} (`modelmirror sync {repo}` fetches it)", path.display())]
    NoMirror { repo: String, path: PathBuf },
    #[error("{repo}: an empty commit")]
    EmptyCommit { repo: String },
    #[error("{repo}: {error}")]
    Git { repo: String, error: GitError },
    #[error("{repo}: there is no file {path} at commit {commit}")]
    NoFile {
        repo: String,
        path: String,
        commit: String,
    },
    #[error(
        "{repo}: {path} is not a file the catalog reads (see `include` and `formats`, and the repository's .hubignore)"
    )]
    NotIncluded { repo: String, path: String },
    #[error(
        "{repo}: {path} at commit {commit} is {size} bytes, over max_model_bytes ({max}); not read. Raise max_model_bytes to read it"
    )]
    TooLarge {
        repo: String,
        path: String,
        commit: String,
        size: u64,
        max: u64,
    },
}

/// A file read at a version: parsed, the format that read it, and its bytes when asked for.
pub(crate) struct ModelFile {
    pub(crate) parsed: Parsed,
    pub(crate) format: Option<&'static str>,
    pub(crate) bytes: Option<Vec<u8>>,
}

/// A repository's mirror, opened once to read versions of its models.
pub(crate) struct Versions<'a> {
    repo: &'a RepoConfig,
    filter: &'a FileFilter,
    mirror: Repository,
}

impl<'a> Versions<'a> {
    /// Open the mirror of `repo` (only an existing one: reading never creates it).
    pub(crate) fn open(config: &'a Config, repo: &'a RepoConfig) -> Result<Self, VersionError> {
        let path = config.mirror_path(repo);
        if !path.join("HEAD").exists() {
            return Err(VersionError::NoMirror {
                repo: repo.id.clone(),
                path,
            });
        }
        let mirror = git::open_mirror_to_read(&path).map_err(|error| VersionError::Git {
            repo: repo.id.clone(),
            error,
        })?;
        Ok(Versions {
            repo,
            filter: &config.filter,
            mirror,
        })
    }

    fn git_err(&self, error: GitError) -> VersionError {
        VersionError::Git {
            repo: self.repo.id.clone(),
            error,
        }
    }

    /// The full id of a commit given as an id, a prefix, or any revision git understands.
    pub(crate) fn resolve(&self, rev: &str) -> Result<String, VersionError> {
        if rev.trim().is_empty() {
            return Err(VersionError::EmptyCommit {
                repo: self.repo.id.clone(),
            });
        }
        git::resolve_commit(&self.mirror, rev)
            .map(|c| c.to_string())
            .map_err(|e| self.git_err(e))
    }

    /// Whether `ancestor` is `commit` itself or one of its ancestors.
    pub(crate) fn is_at_or_before(&self, ancestor: &str, commit: &str) -> bool {
        if ancestor == commit {
            return true;
        }
        match (Oid::from_str(ancestor), Oid::from_str(commit)) {
            (Ok(a), Ok(c)) => git::is_ancestor(&self.mirror, a, c),
            _ => false,
        }
    }

    /// The file at `path` in `commit` (an id or prefix), parsed: the model (or why it is not one), the
    /// commit's full id and the blob id.
    pub(crate) fn model_at(
        &self,
        commit: &str,
        path: &str,
    ) -> Result<(Parsed, String, String), VersionError> {
        let (file, commit, blob) = self.file_at(commit, path, false)?;
        Ok((file.parsed, commit, blob))
    }

    /// [`Versions::model_at`], with the format that read the file and, when `keep_bytes`, the file's bytes.
    pub(crate) fn file_at(
        &self,
        commit: &str,
        path: &str,
        keep_bytes: bool,
    ) -> Result<(ModelFile, String, String), VersionError> {
        // What the catalog would not read is not read here either.
        if !self.filter.matches(path) {
            return Err(VersionError::NotIncluded {
                repo: self.repo.id.clone(),
                path: path.to_string(),
            });
        }
        let (commit_id, blob) = git::blob_at(&self.mirror, commit, path)
            .map_err(|e| self.git_err(e))?
            .ok_or_else(|| VersionError::NoFile {
                repo: self.repo.id.clone(),
                path: path.to_string(),
                commit: commit.to_string(),
            })?;
        // Nor what the repository's `.hubignore` leaves out at that commit.
        let rules = git::root_blob(&self.mirror, commit_id, crate::hubignore::FILE)
            .and_then(|b| git::hubignore(&self.mirror, b))
            .map_err(|e| self.git_err(e))?;
        if rules.0.is_ignored(path) {
            return Err(VersionError::NotIncluded {
                repo: self.repo.id.clone(),
                path: path.to_string(),
            });
        }
        let size = git::blob_size(&self.mirror, blob).map_err(|e| self.git_err(e))?;
        let max = self.filter.max_model_bytes;
        if size > max {
            return Err(VersionError::TooLarge {
                repo: self.repo.id.clone(),
                path: path.to_string(),
                commit: commit_id.to_string(),
                size,
                max,
            });
        }
        let file = git::with_blob(&self.mirror, blob, |bytes| {
            let (parsed, format) = self.filter.parse_named(path, bytes);
            ModelFile {
                parsed,
                format,
                bytes: keep_bytes.then(|| bytes.to_vec()),
            }
        })
        .map_err(|e| self.git_err(e))?;
        Ok((file, commit_id.to_string(), blob.to_string()))
    }
}
