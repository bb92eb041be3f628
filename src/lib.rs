//! modelmirror keeps a searchable, versioned catalog of the data models (Hackolade model files first, JSON
//! Schema and Avro too) that teams keep in Git, by mirroring each repository's default branch with libgit2.
//!
//! The modules form layers; a module uses only modules of lower layers, so the graph has no cycles (the
//! test `architecture` in `tests/it` checks it, and that each outside library stays in the module that
//! wraps it):
//!
//! 1. Leaves, which use no other module: [`secret`] (tokens that never print), [`redact`] (credentials
//!    masked in text), [`schedule`] (cron), [`hubignore`] (`.hubignore` rules), [`model`] (format parsers
//!    into one neutral model type, and which files they read) and [`metrics`] (the counters' registry).
//! 2. [`git`]: libgit2 and nothing else: mirrors, fetching, history, tree diffs, blobs.
//! 3. [`forge`] (everything that differs per Git host: URLs, git auth, REST discovery, webhooks) and
//!    [`store`] (the database: the only module with SQL).
//! 4. [`config`]: the TOML files, validated with what [`forge`] knows of each host.
//! 5. [`poll`] (one poll of one repository: list refs → fetch → diff → parse → one transaction per commit)
//!    and [`query`] (the one query layer that the command line and the web catalog both answer from).
//! 6. [`service`]: the daemon: supervisor, repository and discovery loops, listeners, signals, systemd.
//! 7. [`cli`]: the commands and what they print.
//!
//! Data flows one way through them: the configuration says what to mirror, git brings the files, the model
//! parsers read them, the store keeps them, and the service and the command line serve them.

pub mod cli;
pub mod config;
pub mod forge;
pub mod git;
pub(crate) mod hubignore;
pub(crate) mod metrics;
pub mod model;
pub(crate) mod poll;
pub(crate) mod query;
pub(crate) mod redact;
pub(crate) mod schedule;
pub(crate) mod secret;
pub(crate) mod service;
pub mod store;
