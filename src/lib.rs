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
pub mod hubignore;
pub mod metrics;
pub mod model;
pub mod poll;
pub mod redact;
pub mod schedule;
pub mod secret;
pub mod service;
pub mod store;
