//! Integration tests, one binary with a module per area. Real parts only: git goes over a real smart-HTTP
//! server (`git http-backend` behind a small HTTP server), SQLite is a real file, and modelmirror runs as a
//! real process that receives real signals.

#[path = "../common/forges.rs"]
mod forges;
#[path = "../common/git_http.rs"]
mod git_http;
#[path = "../common/http_client.rs"]
mod http_client;
#[path = "../common/pg.rs"]
mod pg;
#[path = "../common/proxy.rs"]
mod proxy;
#[path = "../common/tls.rs"]
mod tls;

mod architecture;
mod browser;
mod catalog;
mod cli;
mod counting;
mod edges;
mod failures;
mod hardening;
mod heads;
mod on_postgresql;
mod operations;
mod pipeline;
mod property;
mod providers;
mod service;
mod ssh;
mod statuses;
mod support;
mod web;
mod webhooks;
