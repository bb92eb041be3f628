//! Integration tests, one binary with a module per area. Real parts only: git goes over a real smart-HTTP
//! server (`git http-backend` behind a small HTTP server), SQLite is a real file, and modelmirror runs as a
//! real process that receives real signals.

#[path = "../common/git_http.rs"]
mod git_http;

mod cli;
mod counting;
mod failures;
mod pipeline;
mod service;
mod ssh;
mod support;
