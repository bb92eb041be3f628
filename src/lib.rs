//! modelmirror keeps a searchable SQLite replica of the data models (Hackolade model files first) that teams
//! keep in Git, by polling each repository's default branch with libgit2.
//!
//! Data flows one way: [`config`] → [`provider`] / [`git`] → [`model`] → [`store`], driven by [`sync`] (one
//! poll of one repository, one discovery run of one provider) and [`daemon`] (schedules, concurrency,
//! signals). [`webhook`] is the optional listener whose verified pushes nudge polls. [`cli`] is the command
//! line.

pub mod cli;
pub mod config;
pub mod forge;
pub mod git;
pub(crate) mod hubignore;
pub(crate) mod metrics;
pub mod model;
pub(crate) mod poll;
pub(crate) mod redact;
pub(crate) mod schedule;
pub(crate) mod secret;
pub(crate) mod service;
pub mod store;
