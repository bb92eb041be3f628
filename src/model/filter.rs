//! Which files of a repository are read, and how: the `include` globs (by default each enabled format's own),
//! the size limit, and the enabled formats in the order they are tried.

use globset::{Glob, GlobSet, GlobSetBuilder};

use super::{FORMATS, Format, PARSER_VERSION, Parsed};

/// Default `formats`.
pub(crate) const DEFAULT_FORMATS: &[&str] = &["hackolade"];

/// What is wrong with the settings a filter is built from.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FilterError {
    #[error("formats: unknown format `{0}`; use hackolade, jsonschema or avro")]
    UnknownFormat(String),
    #[error("include glob `{pattern}`: {error}")]
    Glob {
        pattern: String,
        error: globset::Error,
    },
    #[error("include globs: {0}")]
    Globs(globset::Error),
}

/// Which files of a repository are looked at, and which formats read them.
#[derive(Clone)]
pub(crate) struct FileFilter {
    include: Vec<String>,
    globs: GlobSet,
    /// Files over this size are recorded as skipped, not read.
    pub(crate) max_model_bytes: u64,
    /// The model formats read, in the order they are tried.
    formats: Vec<&'static dyn Format>,
}

impl std::fmt::Debug for FileFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileFilter")
            .field("include", &self.include)
            .field("max_model_bytes", &self.max_model_bytes)
            .field("formats", &self.format_names())
            .finish()
    }
}

impl FileFilter {
    /// A filter for the formats named in `formats`, reading the files `include` matches (`None`: the globs of
    /// the enabled formats, such as `**/*.json` or `**/*.avsc`).
    pub(crate) fn new<S: AsRef<str>>(
        formats: &[S],
        include: Option<&[String]>,
        max_model_bytes: u64,
    ) -> Result<FileFilter, FilterError> {
        let mut chosen = Vec::new();
        for name in formats {
            let name = name.as_ref();
            chosen
                .push(super::format(name).ok_or_else(|| FilterError::UnknownFormat(name.into()))?);
        }
        let include = match include {
            Some(globs) => globs.to_vec(),
            None => default_include(&chosen),
        };
        let mut builder = GlobSetBuilder::new();
        for pattern in &include {
            let glob = Glob::new(pattern).map_err(|error| FilterError::Glob {
                pattern: pattern.clone(),
                error,
            })?;
            builder.add(glob);
        }
        let globs = builder.build().map_err(FilterError::Globs)?;
        Ok(FileFilter {
            include,
            globs,
            max_model_bytes,
            formats: chosen,
        })
    }

    /// Whether a repository path (relative, `/`-separated) is considered at all.
    pub(crate) fn matches(&self, path: &str) -> bool {
        self.globs.is_match(path)
    }

    /// Read one file with the enabled formats, in turn: the first that says anything but "not a model"
    /// decides.
    pub(crate) fn parse(&self, path: &str, bytes: &[u8]) -> Parsed {
        super::parse_with(&self.formats, path, bytes)
    }

    /// [`FileFilter::parse`], with the name of the format that decided (`None` when none did).
    pub(crate) fn parse_named(&self, path: &str, bytes: &[u8]) -> (Parsed, Option<&'static str>) {
        for f in &self.formats {
            match f.parse(path, bytes) {
                Parsed::NotModel => continue,
                other => return (other, Some(f.name())),
            }
        }
        (Parsed::NotModel, None)
    }

    fn format_names(&self) -> Vec<&'static str> {
        self.formats.iter().map(|f| f.name()).collect()
    }

    /// A fingerprint of the settings that decide what is stored, so that a change of them makes the next poll
    /// compare the whole tree again instead of only what changed in Git.
    pub(crate) fn fingerprint(&self) -> String {
        format!(
            "include={:?};max_model_bytes={};parser={PARSER_VERSION};formats={:?}",
            self.include,
            self.max_model_bytes,
            self.format_names()
        )
    }
}

/// The globs of the enabled formats, in the registry's order, each once.
fn default_include(formats: &[&'static dyn Format]) -> Vec<String> {
    let mut globs: Vec<String> = Vec::new();
    for f in FORMATS
        .iter()
        .filter(|f| formats.iter().any(|c| c.name() == f.name()))
    {
        for g in f.default_globs() {
            if !globs.iter().any(|x| x == g) {
                globs.push((*g).to_string());
            }
        }
    }
    globs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_globs_follow_the_enabled_formats_and_the_fingerprint_is_stable() {
        let f = FileFilter::new(DEFAULT_FORMATS, None, 10).unwrap();
        assert_eq!(f.include, ["**/*.json"]);
        assert!(f.matches("a/b.json") && !f.matches("a/b.avsc"));
        // The fingerprint is stored in every database: its form must not change.
        assert_eq!(
            f.fingerprint(),
            format!(
                "include=[\"**/*.json\"];max_model_bytes=10;parser={PARSER_VERSION};formats=[\"hackolade\"]"
            )
        );
        let f = FileFilter::new(&["avro", "hackolade"], None, 10).unwrap();
        assert_eq!(f.include, ["**/*.json", "**/*.avsc", "**/*.avpr"]);
        let f = FileFilter::new(&["avro"], None, 10).unwrap();
        assert_eq!(f.include, ["**/*.avsc", "**/*.avpr"]);
        assert!(matches!(
            FileFilter::new(&["xml"], None, 1),
            Err(FilterError::UnknownFormat(_))
        ));
        assert!(matches!(
            FileFilter::new(DEFAULT_FORMATS, Some(&["[".to_string()]), 1),
            Err(FilterError::Glob { .. })
        ));
    }
}
