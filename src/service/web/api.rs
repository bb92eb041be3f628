//! The JSON API (`/api/v1`): the same answers as the command line's `--json`, from the same query layer.
//! Lists are paginated with `limit` and `cursor` and say where the next page is in a `Link: <…>;
//! rel="next"` header, so a page's body is exactly the CLI's array (or a slice of it). Errors are JSON
//! (`{"error": "...", "status": N}`); every answer carries an `ETag` that changes with the catalog, and an
//! `If-None-Match` that matches gets `304`. `openapi.json` describes it all.

use hyper::StatusCode;
use serde::Serialize;

use super::{Params, Reply, Request};
use crate::query::{Catalog, QueryError};

/// The OpenAPI 3.1 description of every endpoint and schema.
const OPENAPI: &str = include_str!("openapi.json");
/// Items per page unless `limit` says otherwise, and the most a page may hold.
const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 1000;
/// How far into the search hits or the events a page may start: they are read from their start to the
/// page, so this bounds the work of one request. (The other lists are read whole anyway.)
const MAX_CURSOR: usize = 100_000;
/// The cursor's bound for the lists read whole.
const NO_CURSOR_BOUND: usize = usize::MAX / 2;

/// An API error: its status and message.
pub(super) struct ApiError {
    status: StatusCode,
    pub(super) message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }
}

impl ApiError {
    pub(super) fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> ApiError {
        use crate::git::GitError;
        use crate::query::VersionError;
        let status = match &e {
            QueryError::UnknownRepo(_) | QueryError::NotFound(_) => StatusCode::NOT_FOUND,
            QueryError::BadRequest(_) => StatusCode::BAD_REQUEST,
            QueryError::Version(v) => match v {
                VersionError::NoMirror { .. }
                | VersionError::NoFile { .. }
                | VersionError::Git {
                    error: GitError::UnknownCommit { .. },
                    ..
                } => StatusCode::NOT_FOUND,
                VersionError::NotIncluded { .. } => StatusCode::NOT_FOUND,
                VersionError::EmptyCommit { .. } | VersionError::TooLarge { .. } => {
                    StatusCode::BAD_REQUEST
                }
                VersionError::Git { .. } => StatusCode::INTERNAL_SERVER_ERROR,
            },
            QueryError::Store(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // What the server's files are called is for its log, not for whoever asks.
        let message = match &e {
            _ if status == StatusCode::INTERNAL_SERVER_ERROR => {
                tracing::error!("web catalog: {e}");
                "an internal error; the service's log says what happened".to_string()
            }
            QueryError::Version(VersionError::NoMirror { repo, .. }) => {
                tracing::warn!("web catalog: {e}");
                format!("{repo}: its local mirror is missing; the next poll fetches it again")
            }
            _ => e.to_string(),
        };
        ApiError::new(status, message)
    }
}

/// The JSON of an error.
pub(super) fn error(e: &ApiError) -> Reply {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        status: u16,
    }
    Reply::json(
        e.status,
        &Body {
            error: &e.message,
            status: e.status.as_u16(),
        },
    )
}

/// Answer an API request (its path below `/api/v1`).
pub(super) fn answer(req: &Request<'_>, catalog: &Catalog<'_>, path: &str) -> Reply {
    match route(req, catalog, path) {
        Ok(reply) => reply,
        Err(e) => error(&e),
    }
}

fn route(req: &Request<'_>, catalog: &Catalog<'_>, path: &str) -> Result<Reply, ApiError> {
    let p = &req.params;
    match path {
        "/openapi.json" => Ok(Reply::bytes(
            StatusCode::OK,
            OPENAPI.as_bytes().to_vec(),
            "application/json",
        )),
        "/repos" => list(req, catalog.repos()?, NO_CURSOR_BOUND),
        "/models" => list(req, catalog.models(p.get("repo"))?, NO_CURSOR_BOUND),
        "/model" => {
            let model = catalog.model(p.required("repo")?, p.required("path")?, p.get("commit"))?;
            Ok(Reply::json(StatusCode::OK, &model))
        }
        "/history" => list(
            req,
            catalog.history(p.required("repo")?, p.required("path")?)?,
            NO_CURSOR_BOUND,
        ),
        "/changes" => {
            let changes = catalog.changes(
                p.required("repo")?,
                p.required("path")?,
                p.get("from"),
                p.get("to"),
            )?;
            Ok(Reply::json(StatusCode::OK, &changes))
        }
        "/search" => {
            let kind = p.get("kind");
            if let Some(k) = kind
                && !["model", "entity", "attribute"].contains(&k)
            {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    format!("kind {k:?}: use model, entity or attribute"),
                ));
            }
            let (offset, limit) = window(p, MAX_CURSOR)?;
            let hits = catalog.search(
                p.required("q")?,
                p.get("repo"),
                kind,
                offset.saturating_add(limit).saturating_add(1),
            )?;
            list(req, hits, MAX_CURSOR)
        }
        "/events" => {
            let (offset, limit) = window(p, MAX_CURSOR)?;
            let events = catalog.events(
                p.get("repo"),
                offset.saturating_add(limit).saturating_add(1),
            )?;
            list(req, events, MAX_CURSOR)
        }
        _ => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no such endpoint: /api/v1{path}; /api/v1/openapi.json lists them"),
        )),
    }
}

/// `cursor` (where the page starts, at most `max_cursor`) and `limit` (how many), checked.
fn window(p: &Params, max_cursor: usize) -> Result<(usize, usize), ApiError> {
    let number = |key: &str, default: usize, min: usize, max: usize| -> Result<usize, ApiError> {
        match p.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (min..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        format!("{key} = {v:?}: give a whole number from {min} to {max}"),
                    )
                }),
        }
    };
    Ok((
        number("cursor", 0, 0, max_cursor)?,
        number("limit", DEFAULT_LIMIT, 1, MAX_LIMIT)?,
    ))
}

/// One page of `items`, with a `Link` to the next when there is more (and the next may start there).
fn list<T: Serialize>(
    req: &Request<'_>,
    items: Vec<T>,
    max_cursor: usize,
) -> Result<Reply, ApiError> {
    let (offset, limit) = window(&req.params, max_cursor)?;
    let more = items.len() > offset.saturating_add(limit) && offset + limit <= max_cursor;
    let page: Vec<T> = items.into_iter().skip(offset).take(limit).collect();
    let mut reply = Reply::json(StatusCode::OK, &page);
    if more {
        let next = req.with_param("cursor", &(offset + limit).to_string());
        reply.link_next = Some(next);
    }
    Ok(reply)
}
