//! The pages of the web catalog: server-rendered HTML that works without JavaScript, each at a stable URL
//! with its parameters in the query string (so repository ids and paths with slashes, spaces or `%` survive
//! a copy and paste). Every value from the catalog is escaped on its way into a page.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use hyper::StatusCode;

use super::html::{MARKS, anchor, entity_keys, esc, highlight, link, or_dash, page, short};
use super::{Reply, Request, diagram};
use crate::model::{Attribute, Entity, Model};
use crate::query::{Catalog, HistoryRow, QueryError};
use crate::store::EventRow;

/// Answer a page request.
pub(super) fn answer(req: &Request<'_>, catalog: &Catalog<'_>) -> Reply {
    let result = match req.path {
        "/" => repos(catalog),
        "/models" => models(req, catalog),
        "/model" => model(req, catalog),
        "/history" => history(req, catalog),
        "/compare" => compare(req, catalog),
        "/search" => search(req, catalog),
        "/events" => events(req, catalog),
        _ => Err(PageError::NotFound(format!(
            "There is no page at {}.",
            req.path
        ))),
    };
    match result {
        Ok(html) => Reply::html(StatusCode::OK, html),
        Err(e) => error_page(&e),
    }
}

/// Why a page cannot be shown.
enum PageError {
    NotFound(String),
    BadRequest(String),
    Internal(String),
}

impl From<QueryError> for PageError {
    fn from(e: QueryError) -> PageError {
        let e = super::api::ApiError::from(e);
        match e.status() {
            StatusCode::NOT_FOUND => PageError::NotFound(e.message),
            StatusCode::BAD_REQUEST => PageError::BadRequest(e.message),
            _ => PageError::Internal(e.message),
        }
    }
}

fn error_page(e: &PageError) -> Reply {
    let (status, title, message) = match e {
        PageError::NotFound(m) => (StatusCode::NOT_FOUND, "Not found", m),
        PageError::BadRequest(m) => (StatusCode::BAD_REQUEST, "Cannot show this", m),
        PageError::Internal(m) => (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong", m),
    };
    let body = format!(
        "<h1>{}</h1>\n<p class=\"error\">{}</p>\n<p><a href=\"/\">Back to the repositories</a> · \
         <a href=\"/models\">all models</a> · <a href=\"/search\">search</a></p>",
        esc(title),
        esc(message)
    );
    Reply::html(
        status,
        page(title, &[("Repositories", "/".into())], "", &body),
    )
}

/// The page for a request that cannot be answered as asked.
pub(super) fn bad_request(message: String) -> Reply {
    error_page(&PageError::BadRequest(message))
}

type Page = Result<String, PageError>;

fn required<'a>(req: &'a Request<'_>, key: &str) -> Result<&'a str, PageError> {
    req.params
        .get(key)
        .ok_or_else(|| PageError::BadRequest(format!("This page needs the `{key}` parameter.")))
}

/// The host's page of a repository, when known.
fn repo_page(catalog: &Catalog<'_>, repo_id: &str, discovered: Option<&str>) -> Option<String> {
    if let Some(url) = discovered.filter(|u| u.starts_with("http")) {
        return Some(url.to_string());
    }
    let (provider, path) = repo_id.split_once('/')?;
    let p = catalog
        .config
        .providers
        .iter()
        .find(|p| p.name == provider)?;
    p.kind.forge().repo_page(&p.base_url, path)
}

fn file_page(catalog: &Catalog<'_>, repo_id: &str, commit: &str, path: &str) -> Option<String> {
    let web_url = catalog
        .store
        .status()
        .ok()?
        .into_iter()
        .find(|r| r.repo == repo_id)
        .and_then(|r| r.web_url);
    let repo = repo_page(catalog, repo_id, web_url.as_deref())?;
    let provider = repo_id.split('/').next()?;
    let p = catalog
        .config
        .providers
        .iter()
        .find(|p| p.name == provider)?;
    p.kind.forge().file_page(&repo, commit, path)
}

fn repos(catalog: &Catalog<'_>) -> Page {
    let mut rows = crate::query::repos(catalog.store, Some(catalog.config))?;
    // Failing ones first.
    rows.sort_by(|a, b| (a.last_error.is_none(), &a.repo).cmp(&(b.last_error.is_none(), &b.repo)));
    let failing = rows.iter().filter(|r| r.last_error.is_some()).count();
    let models: i64 = rows.iter().map(|r| r.models).sum();
    let mut b = String::new();
    let _ = write!(
        b,
        "<h1>Repositories</h1>\n<p class=\"summary\">{} repositories, {} models, {}</p>",
        rows.len(),
        models,
        if failing == 0 {
            "none failing".to_string()
        } else {
            format!("<strong class=\"bad\">{failing} failing</strong>")
        }
    );
    b.push_str(
        "<div class=\"scroll\"><table class=\"list repos\">\n<thead><tr><th>Repository</th><th>State</th>\
         <th>Branch</th><th>Commit</th><th class=\"num\">Models</th><th class=\"num\">Errors</th>\
         <th>Last check</th><th>Last change</th><th>Host</th></tr></thead>\n<tbody>\n",
    );
    for r in &rows {
        let class = if r.last_error.is_some() {
            " class=\"failing\""
        } else {
            ""
        };
        let state = match &r.state_reason {
            Some(reason) if r.state != "active" => {
                format!(
                    "{} <span class=\"muted\">({})</span>",
                    esc(&r.state),
                    esc(reason)
                )
            }
            _ => esc(&r.state),
        };
        let host = repo_page(catalog, &r.repo, r.web_url.as_deref())
            .map(|u| {
                format!(
                    "<a href=\"{}\" rel=\"noopener noreferrer\">open</a>",
                    esc(&u)
                )
            })
            .unwrap_or_else(|| "–".into());
        let _ = write!(
            b,
            "<tr{class}><td>{}<a href=\"{}\">{}</a></td><td>{state}</td><td>{}</td><td><code>{}</code></td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{host}</td></tr>",
            if r.last_error.is_some() {
                "<span class=\"mark\" title=\"failing\">⚠</span> "
            } else {
                ""
            },
            link("/models", &[("repo", &r.repo)]),
            esc(&r.repo),
            or_dash(r.default_branch.as_deref()),
            r.commit
                .as_deref()
                .map_or_else(|| "–".into(), |c| esc(short(c))),
            r.models,
            r.errors,
            or_dash(r.last_check_at.as_deref()),
            or_dash(r.last_change_at.as_deref()),
        );
        if let Some(e) = &r.last_error {
            let _ = write!(
                b,
                "<tr class=\"failing detail\"><td colspan=\"9\"><span class=\"error\">{}</span></td></tr>",
                esc(e)
            );
        }
    }
    b.push_str("</tbody></table></div>\n");
    Ok(page(
        "Repositories",
        &[("Repositories", "/".into())],
        "",
        &b,
    ))
}

fn models(req: &Request<'_>, catalog: &Catalog<'_>) -> Page {
    let repo = req.params.get("repo");
    let target = req.params.get("target").unwrap_or("");
    let name = req.params.get("q").unwrap_or("").to_lowercase();
    if let Some(r) = repo {
        catalog.find_repo(r).map_err(|_| {
            PageError::NotFound(format!("There is no repository {r} in the catalog."))
        })?;
    }
    let all = catalog.models(repo)?;
    let targets: BTreeSet<&str> = all.iter().filter_map(|m| m.target.as_deref()).collect();
    let shown: Vec<_> = all
        .iter()
        .filter(|m| target.is_empty() || m.target.as_deref() == Some(target))
        .filter(|m| {
            name.is_empty()
                || m.path.to_lowercase().contains(&name)
                || m.name
                    .as_deref()
                    .is_some_and(|n| n.to_lowercase().contains(&name))
        })
        .collect();
    let errors = shown.iter().filter(|m| m.status == "error").count();
    let skipped = shown.iter().filter(|m| m.status == "skipped").count();
    let mut b = String::new();
    let title = repo.map_or_else(|| "All models".to_string(), |r| format!("Models of {r}"));
    let _ = write!(b, "<h1>{}</h1>", esc(&title));
    // A commit status links here with the commit it was posted on; the catalog may have moved on since.
    if let (Some(r), Some(asked)) = (repo, req.params.get("commit")) {
        let head = catalog
            .store
            .repo_state(r)
            .map_err(crate::query::QueryError::from)?
            .commit
            .unwrap_or_default();
        let short = |c: &str| c.get(..12).unwrap_or(c).to_string();
        if head.is_empty() {
            b.push_str(
                "<p class=\"summary\">The catalog has read no commit of this repository yet.</p>",
            );
        } else if head.starts_with(&asked.to_ascii_lowercase()) {
            let _ = write!(
                b,
                "<p class=\"summary\">The models at commit <code>{}</code>, the newest the catalog has read.</p>",
                esc(&short(&head))
            );
        } else {
            let _ = write!(
                b,
                "<p class=\"summary\">You asked for commit <code>{}</code>; the catalog has read a newer one since, \
                 <code>{}</code>, and these are its models. Each model's history shows its earlier versions.</p>",
                esc(&short(asked)),
                esc(&short(&head))
            );
        }
    }
    let _ = write!(
        b,
        "<form class=\"filters\" action=\"/models\" method=\"get\">{}\
         <label>Target <select name=\"target\"><option value=\"\">any</option>",
        repo.map_or_else(String::new, |r| format!(
            "<input type=\"hidden\" name=\"repo\" value=\"{}\">",
            esc(r)
        ))
    );
    for t in &targets {
        let selected = if *t == target { " selected" } else { "" };
        let _ = write!(
            b,
            "<option value=\"{}\"{selected}>{}</option>",
            esc(t),
            esc(t)
        );
    }
    let _ = write!(
        b,
        "</select></label> <label>Name <input type=\"text\" name=\"q\" value=\"{}\"></label> \
         <button type=\"submit\">Filter</button></form>",
        esc(req.params.get("q").unwrap_or(""))
    );
    let _ = write!(
        b,
        "<p class=\"summary\">{} of {} models{}{}</p>",
        shown.len(),
        all.len(),
        if errors > 0 {
            format!(", <strong class=\"bad\">{errors} with errors</strong>")
        } else {
            String::new()
        },
        if skipped > 0 {
            format!(", {skipped} skipped")
        } else {
            String::new()
        },
    );
    b.push_str(
        "<div class=\"scroll\"><table class=\"list models\">\n<thead><tr><th>Model</th><th>Path</th>\
         <th>Target</th><th class=\"num\">Entities</th><th class=\"num\">Attributes</th><th>Repository</th>\
         </tr></thead>\n<tbody>\n",
    );
    for m in &shown {
        let href = link("/model", &[("repo", &m.repo), ("path", &m.path)]);
        let _ = write!(
            b,
            "<tr{}><td><a href=\"{href}\">{}</a></td><td><code>{}</code></td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td><a href=\"{}\">{}</a></td></tr>",
            if m.status == "ok" {
                ""
            } else {
                " class=\"failing\""
            },
            m.name.as_deref().map_or_else(|| esc(&m.path), esc),
            esc(&m.path),
            or_dash(m.target.as_deref()),
            m.entities,
            m.attributes,
            link("/models", &[("repo", &m.repo)]),
            esc(&m.repo),
        );
        if m.status != "ok" {
            let _ = write!(
                b,
                "<tr class=\"failing detail\"><td colspan=\"6\"><span class=\"error\">{}: {}</span></td></tr>",
                esc(&m.status),
                or_dash(m.error.as_deref())
            );
        }
    }
    b.push_str("</tbody></table></div>\n");
    let mut crumbs = vec![("Repositories", "/".to_string())];
    if let Some(r) = repo {
        crumbs.push((r, link("/models", &[("repo", r)])));
    } else {
        crumbs.push(("Models", String::new()));
    }
    Ok(page(&title, &crumbs, "", &b))
}

fn model_crumbs<'a>(repo: &'a str, path: &'a str) -> Vec<(&'a str, String)> {
    vec![
        ("Repositories", "/".to_string()),
        (repo, link("/models", &[("repo", repo)])),
        (path, link("/model", &[("repo", repo), ("path", path)])),
    ]
}

/// The newest version of a model that parsed, if any (for a model whose current version does not).
fn last_good(catalog: &Catalog<'_>, repo: &str, path: &str) -> Option<HistoryRow> {
    catalog.history(repo, path).ok()?.into_iter().find(|v| {
        v.error.is_none()
            && v.blob.is_some()
            && !v.change.starts_with("renamed to")
            && v.entities.is_some()
    })
}

fn model(req: &Request<'_>, catalog: &Catalog<'_>) -> Page {
    let repo = required(req, "repo")?;
    let path = required(req, "path")?;
    let commit = req.params.get("commit");
    let container = req.params.get("container");
    let crumbs = model_crumbs(repo, path);
    // A model that does not parse at its newest version: its error, and its last good version.
    if commit.is_none()
        && let Some(row) = catalog.model_row(repo, path)?
        && row.status != "ok"
    {
        let mut b = format!(
            "<h1>{}</h1>\n<p class=\"error\">This model could not be read at commit <code>{}</code>: {}</p>\n",
            esc(path),
            esc(short(&row.commit)),
            or_dash(row.error.as_deref())
        );
        match last_good(catalog, repo, path) {
            Some(v) => {
                let _ = write!(
                    b,
                    "<p>Its last good version: <a href=\"{}\">commit {}</a>{}.</p>",
                    link(
                        "/model",
                        &[("repo", repo), ("path", &v.path), ("commit", &v.commit)]
                    ),
                    esc(short(&v.commit)),
                    v.time
                        .as_deref()
                        .map_or_else(String::new, |t| format!(" ({})", esc(t)))
                );
            }
            None => b.push_str("<p>It has no earlier version that could be read.</p>"),
        }
        let _ = write!(
            b,
            "<p><a href=\"{}\">History</a></p>",
            link("/history", &[("repo", repo), ("path", path)])
        );
        return Ok(page(path, &crumbs, "", &b));
    }
    let shown = catalog.model(repo, path, commit)?;
    let m = &shown.model;
    let mut b = String::new();
    let _ = write!(b, "<h1>{}</h1>\n<dl class=\"facts\">", esc(&m.name));
    let fact = |b: &mut String, label: &str, value: Option<&str>| {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            let _ = write!(b, "<dt>{}</dt><dd>{}</dd>", esc(label), esc(v));
        }
    };
    fact(&mut b, "Target", m.db_vendor.as_deref());
    fact(&mut b, "App target", m.app_target.as_deref());
    fact(&mut b, "Version", m.db_version.as_deref());
    let _ = write!(
        b,
        "<dt>File</dt><dd><code>{}</code> in <a href=\"{}\">{}</a>{}</dd>",
        esc(path),
        link("/models", &[("repo", repo)]),
        esc(repo),
        file_page(catalog, repo, &shown.commit, path)
            .map(|u| format!(
                " · <a href=\"{}\" rel=\"noopener noreferrer\">view on the host</a>",
                esc(&u)
            ))
            .unwrap_or_default()
    );
    let info = catalog.store.commit(repo, &shown.commit).ok().flatten();
    let _ = write!(
        b,
        "<dt>Commit</dt><dd><code>{}</code>{}</dd>",
        esc(short(&shown.commit)),
        info.map(|c| format!(
            " by {} at {}: {}",
            esc(&c.author),
            esc(&c.time),
            esc(c.message.lines().next().unwrap_or(""))
        ))
        .unwrap_or_default()
    );
    let _ = write!(
        b,
        "<dt>Contents</dt><dd>{} entities, {} attributes, {} relationships, {} views, {} definitions</dd></dl>",
        m.entity_count(),
        m.attribute_count(),
        m.relationships.len(),
        m.views.len(),
        m.definitions.len()
    );
    if let Some(d) = m.description.as_deref().filter(|d| !d.is_empty()) {
        let _ = write!(b, "<p class=\"description\">{}</p>", esc(d));
    }
    let _ = write!(
        b,
        "<p class=\"actions\"><a href=\"{}\">History</a> · <a href=\"{}\">Compare with the previous version</a></p>",
        link("/history", &[("repo", repo), ("path", path)]),
        link(
            "/compare",
            &[("repo", repo), ("path", path), ("to", commit.unwrap_or(""))]
        ),
    );
    let here = Here {
        repo,
        path,
        commit,
        container,
    };
    diagram_section(&mut b, m, &here, container);
    entities_section(&mut b, m, &here, req.params.get("entity"));
    relationships_section(&mut b, m);
    if !m.views.is_empty() {
        b.push_str("<h2>Views</h2>\n<ul class=\"views\">");
        for v in &m.views {
            let _ = write!(
                b,
                "<li>{} <span class=\"muted\">on {}</span></li>",
                esc(&v.name),
                or_dash(v.view_on.as_deref())
            );
        }
        b.push_str("</ul>\n");
    }
    if !m.definitions.is_empty() {
        let _ = write!(
            b,
            "<h2>Definitions <span class=\"muted\">({})</span></h2>",
            m.definitions.len()
        );
        let mut budget = MAX_TREE_ATTRIBUTES;
        tree(&mut b, &m.definitions, "", "d", &mut budget);
    }
    Ok(page(&m.name, &crumbs, "", &b))
}

fn diagram_section(b: &mut String, m: &Model, here: &Here<'_>, container: Option<&str>) {
    let (repo, path, commit) = (here.repo, here.path, here.commit);
    let containers: BTreeSet<&str> = m
        .entities
        .iter()
        .filter_map(|e| e.container.as_deref())
        .collect();
    b.push_str("<h2>Diagram</h2>\n");
    if containers.len() > 1 {
        let _ = write!(
            b,
            "<form class=\"filters\" action=\"/model\" method=\"get\">\
             <input type=\"hidden\" name=\"repo\" value=\"{}\"><input type=\"hidden\" name=\"path\" value=\"{}\">{}\
             <label>Container <select name=\"container\"><option value=\"\">all</option>",
            esc(repo),
            esc(path),
            commit.map_or_else(String::new, |c| format!(
                "<input type=\"hidden\" name=\"commit\" value=\"{}\">",
                esc(c)
            ))
        );
        for c in &containers {
            let selected = if Some(*c) == container {
                " selected"
            } else {
                ""
            };
            let _ = write!(
                b,
                "<option value=\"{}\"{selected}>{}</option>",
                esc(c),
                esc(c)
            );
        }
        b.push_str("</select></label> <button type=\"submit\">Show</button></form>\n");
    }
    b.push_str("<div class=\"diagram-frame\" data-zoom>");
    // A box links to its entity's attributes: further down, or on the entity's own page for a large model.
    let large = m.attribute_count() > MAX_TREE_ATTRIBUTES;
    let href = |e: &Entity, key: &str| {
        let fragment = anchor("e", &[key]);
        match large {
            true => format!("{}#{fragment}", here.link(&[("entity", &e.name)])),
            false => format!("#{fragment}"),
        }
    };
    b.push_str(&diagram::svg(m, container, &href));
    b.push_str("</div>\n<p class=\"muted hint\">Scroll the frame to move around (or drag it with the mouse); Ctrl and the wheel, or the buttons, zoom; select an entity to go to its attributes.</p>\n");
}

/// The model a page shows: for its links.
struct Here<'a> {
    repo: &'a str,
    path: &'a str,
    commit: Option<&'a str>,
    container: Option<&'a str>,
}

impl Here<'_> {
    /// This model's page with `extra` parameters.
    fn link(&self, extra: &[(&str, &str)]) -> String {
        let mut params = vec![("repo", self.repo), ("path", self.path)];
        if let Some(c) = self.commit {
            params.push(("commit", c));
        }
        if let Some(c) = self.container {
            params.push(("container", c));
        }
        params.extend_from_slice(extra);
        link("/model", &params)
    }
}

/// Attributes a model page shows as trees: past this the page lists the entities and shows the tree of the
/// one asked for (`entity=NAME`), so that a huge model does not make a page of hundreds of megabytes.
const MAX_TREE_ATTRIBUTES: usize = 20_000;
/// Entities listed at most on the page of a large model.
const MAX_LISTED_ENTITIES: usize = 5_000;

fn entities_section(b: &mut String, m: &Model, here: &Here<'_>, focus: Option<&str>) {
    let keys = entity_keys(&m.entities);
    let large = m.attribute_count() > MAX_TREE_ATTRIBUTES;
    let _ = writeln!(
        b,
        "<h2>Entities <span class=\"muted\">({})</span></h2>",
        m.entities.len()
    );
    if large {
        let _ = write!(
            b,
            "<p class=\"muted\">This model has {} attributes: choose an entity to see its attribute tree.</p>\n\
             <div class=\"scroll\"><table class=\"list entities\"><thead><tr><th>Entity</th><th>Container</th>\
             <th class=\"num\">Attributes</th></tr></thead><tbody>",
            m.attribute_count()
        );
        for e in m.entities.iter().take(MAX_LISTED_ENTITIES) {
            let name = match e.name.is_empty() {
                true => "<span class=\"muted\">(no name)</span>".to_string(),
                false => format!(
                    "<a href=\"{}\">{}</a>",
                    here.link(&[("entity", &e.name)]),
                    esc(&e.name)
                ),
            };
            let _ = write!(
                b,
                "<tr><td>{name}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                or_dash(e.container.as_deref()),
                e.attributes.len()
            );
        }
        b.push_str("</tbody></table></div>\n");
        if m.entities.len() > MAX_LISTED_ENTITIES {
            let _ = writeln!(
                b,
                "<p class=\"muted\">The first {MAX_LISTED_ENTITIES} of {} entities are listed; search finds the others.</p>",
                m.entities.len()
            );
        }
    }
    let shown: Vec<usize> = (0..m.entities.len())
        .filter(|&i| !large || focus == Some(m.entities[i].name.as_str()))
        .collect();
    if shown.is_empty() {
        return;
    }
    b.push_str(
        "<p class=\"tree-tools\" hidden><button type=\"button\" data-tree=\"open\">Expand all</button> \
         <button type=\"button\" data-tree=\"close\">Collapse all</button></p>",
    );
    // However an entity is asked for, one page shows `MAX_TREE_ATTRIBUTES` attributes at most.
    let mut budget = MAX_TREE_ATTRIBUTES;
    for i in shown {
        let e = &m.entities[i];
        let _ = write!(
            b,
            "<section class=\"entity\" id=\"{}\"><h3>{}{}{}</h3>",
            anchor("e", &[&keys[i]]),
            esc(&e.name),
            e.code
                .as_deref()
                .map_or_else(String::new, |c| format!(" <code>{}</code>", esc(c))),
            e.container.as_deref().map_or_else(String::new, |c| format!(
                " <span class=\"muted\">in {}</span>",
                esc(c)
            )),
        );
        if let Some(d) = e.description.as_deref().filter(|d| !d.is_empty()) {
            let _ = write!(b, "<p class=\"description\">{}</p>", esc(d));
        }
        tree(b, &e.attributes, &keys[i], "a", &mut budget);
        b.push_str("</section>\n");
    }
}

/// A flattened attribute tree as nested lists: an attribute with children is a collapsible `<details>`.
/// `budget`: attributes the page may still show; past it the tree says how many it leaves out.
fn tree(b: &mut String, attrs: &[Attribute], entity: &str, prefix: &str, budget: &mut usize) {
    let mut children: Vec<Vec<usize>> = vec![Vec::new(); attrs.len()];
    let mut roots = Vec::new();
    for (i, a) in attrs.iter().enumerate() {
        match a.parent.filter(|p| *p < i) {
            Some(p) => children[p].push(i),
            None => roots.push(i),
        }
    }
    if roots.is_empty() {
        b.push_str("<p class=\"muted\">No attributes.</p>");
        return;
    }
    b.push_str("<ul class=\"tree\">");
    // Depth-first without recursion: a hostile model may nest deeply.
    let mut stack: Vec<(usize, bool)> = roots.iter().rev().map(|&i| (i, false)).collect();
    let mut shown = 0;
    while let Some((i, closing)) = stack.pop() {
        if closing {
            b.push_str("</ul></details></li>");
            continue;
        }
        if *budget == 0 {
            continue;
        }
        *budget -= 1;
        shown += 1;
        let a = &attrs[i];
        let row = attribute_row(a, entity, prefix);
        if children[i].is_empty() {
            let _ = write!(b, "<li>{row}</li>");
        } else {
            let _ = write!(b, "<li><details><summary>{row}</summary><ul>");
            stack.push((i, true));
            stack.extend(children[i].iter().rev().map(|&c| (c, false)));
        }
    }
    b.push_str("</ul>\n");
    if shown < attrs.len() {
        let _ = writeln!(
            b,
            "<p class=\"muted\">{} more attributes are not shown on this page; the API (<code>/api/v1/model</code>) has them all.</p>",
            attrs.len() - shown
        );
    }
}

fn attribute_row(a: &Attribute, entity: &str, prefix: &str) -> String {
    let mut flags = String::new();
    if a.primary_key {
        flags.push_str(" <span class=\"flag pk\">PK</span>");
    }
    if a.required {
        flags.push_str(" <span class=\"flag req\">required</span>");
    }
    format!(
        "<span class=\"attr\" id=\"{}\"><span class=\"name\">{}</span> <span class=\"type\">{}</span>{flags}{}</span>",
        anchor(prefix, &[entity, &a.path]),
        esc(&a.name),
        or_dash(a.data_type.as_deref()),
        a.description
            .as_deref()
            .filter(|d| !d.is_empty())
            .map_or_else(String::new, |d| format!(
                " <span class=\"description\">{}</span>",
                esc(d)
            ))
    )
}

fn relationships_section(b: &mut String, m: &Model) {
    if m.relationships.is_empty() {
        return;
    }
    let _ = write!(
        b,
        "<h2>Relationships <span class=\"muted\">({})</span></h2>\n<div class=\"scroll\"><table class=\"list\">\
         <thead><tr><th>Name</th><th>Parent</th><th>Child</th><th>Type</th></tr></thead><tbody>",
        m.relationships.len()
    );
    for r in &m.relationships {
        let end = |entity: Option<&str>, card: Option<&str>| {
            format!(
                "{}{}",
                or_dash(entity),
                card.map_or_else(String::new, |c| format!(
                    " <span class=\"muted\">({})</span>",
                    esc(c)
                ))
            )
        };
        let _ = write!(
            b,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            or_dash(r.name.as_deref()),
            end(r.parent_entity.as_deref(), r.parent_cardinality.as_deref()),
            end(r.child_entity.as_deref(), r.child_cardinality.as_deref()),
            or_dash(r.relationship_type.as_deref()),
        );
    }
    b.push_str("</tbody></table></div>\n");
}

fn history(req: &Request<'_>, catalog: &Catalog<'_>) -> Page {
    let repo = required(req, "repo")?;
    let path = required(req, "path")?;
    let rows = catalog.history(repo, path)?;
    let mut crumbs = model_crumbs(repo, path);
    crumbs.push(("History", String::new()));
    let mut b = format!(
        "<h1>History of {}</h1>\n<form action=\"/compare\" method=\"get\">\
         <input type=\"hidden\" name=\"repo\" value=\"{}\"><input type=\"hidden\" name=\"path\" value=\"{}\">\
         <div class=\"scroll\"><table class=\"list history\"><thead><tr><th>From</th><th>To</th><th>Commit</th><th>Time</th>\
         <th>Author</th><th>Change</th><th class=\"num\">Entities</th><th class=\"num\">Attributes</th><th>Message</th>\
         </tr></thead><tbody>\n",
        esc(path),
        esc(repo),
        esc(path)
    );
    let comparable: Vec<usize> = rows
        .iter()
        .enumerate()
        .filter(|(_, v)| v.blob.is_some() && !v.change.starts_with("renamed to"))
        .map(|(i, _)| i)
        .collect();
    for (i, v) in rows.iter().enumerate() {
        let usable = comparable.contains(&i);
        let radio = |name: &str, checked: bool| {
            if usable {
                format!(
                    "<input type=\"radio\" name=\"{name}\" value=\"{}\" aria-label=\"{name} {}\"{}>",
                    esc(&v.commit),
                    esc(short(&v.commit)),
                    if checked { " checked" } else { "" }
                )
            } else {
                String::new()
            }
        };
        let commit = if usable {
            format!(
                "<a href=\"{}\"><code>{}</code></a>",
                link(
                    "/model",
                    &[("repo", repo), ("path", &v.path), ("commit", &v.commit)]
                ),
                esc(short(&v.commit))
            )
        } else {
            format!("<code>{}</code>", esc(short(&v.commit)))
        };
        let _ = write!(
            b,
            "<tr{}><td>{}</td><td>{}</td><td>{commit}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td>\
             <td class=\"num\">{}</td><td>{}</td></tr>",
            if v.error.is_some() {
                " class=\"failing\""
            } else {
                ""
            },
            radio("from", comparable.get(1) == Some(&i)),
            radio("to", comparable.first() == Some(&i)),
            or_dash(v.time.as_deref()),
            or_dash(v.author.as_deref()),
            esc(&v.change),
            v.entities.map_or_else(|| "–".into(), |n| n.to_string()),
            v.attributes.map_or_else(|| "–".into(), |n| n.to_string()),
            esc(v
                .message
                .as_deref()
                .and_then(|m| m.lines().next())
                .unwrap_or("")),
        );
    }
    b.push_str("</tbody></table></div>\n<p><button type=\"submit\">Compare the two versions</button></p></form>\n");
    Ok(page(&format!("History of {path}"), &crumbs, "", &b))
}

fn compare(req: &Request<'_>, catalog: &Catalog<'_>) -> Page {
    let repo = required(req, "repo")?;
    let path = required(req, "path")?;
    let changes = catalog.changes(repo, path, req.params.get("from"), req.params.get("to"))?;
    let mut crumbs = model_crumbs(repo, path);
    crumbs.push(("Compare", String::new()));
    let version = |v: &crate::query::Version| {
        format!(
            "<a href=\"{}\"><code>{}</code></a>",
            link(
                "/model",
                &[("repo", repo), ("path", &v.path), ("commit", &v.commit)]
            ),
            esc(short(&v.commit))
        )
    };
    let d = &changes.diff;
    let mut b = format!(
        "<h1>Changes to {}</h1>\n<p class=\"summary\">From {} to {}</p>\n",
        esc(path),
        version(&changes.from),
        version(&changes.to)
    );
    if d.is_empty() {
        b.push_str("<p>No changes to entities, attributes or relationships.</p>\n");
        return Ok(page(&format!("Changes to {path}"), &crumbs, "", &b));
    }
    // Entities, then attributes, then relationships: added, removed, renamed, changed.
    let mut rows = Rows::default();
    rows.names("entity added", &d.entities_added, true);
    rows.names("entity removed", &d.entities_removed, false);
    for r in &d.entities_renamed {
        rows.push(
            "renamed",
            "entity renamed",
            &r.to,
            Some(&r.from),
            Some(&r.to),
        );
    }
    let dotted = |e: &str, a: &str| format!("{e}.{a}");
    let attributes_added: Vec<String> = d
        .attributes_added
        .iter()
        .map(|a| dotted(&a.entity, &a.attribute))
        .collect();
    rows.names("attribute added", &attributes_added, true);
    let attributes_removed: Vec<String> = d
        .attributes_removed
        .iter()
        .map(|a| dotted(&a.entity, &a.attribute))
        .collect();
    rows.names("attribute removed", &attributes_removed, false);
    for a in &d.attributes_renamed {
        rows.push(
            "renamed",
            "attribute renamed",
            &a.entity,
            Some(&a.from),
            Some(&a.to),
        );
    }
    for a in &d.attributes_changed {
        let change = format!("{} changed", a.field);
        rows.push(
            "changed",
            &change,
            &dotted(&a.entity, &a.attribute),
            a.from.as_deref(),
            a.to.as_deref(),
        );
    }
    rows.names("relationship added", &d.relationships_added, true);
    rows.names("relationship removed", &d.relationships_removed, false);
    for r in &d.relationships_renamed {
        rows.push(
            "renamed",
            "relationship renamed",
            &r.to,
            Some(&r.from),
            Some(&r.to),
        );
    }
    for r in &d.relationships_changed {
        let change = format!("{} changed", r.field);
        rows.push(
            "changed",
            &change,
            &r.relationship,
            r.from.as_deref(),
            r.to.as_deref(),
        );
    }
    if !rows.0.is_empty() {
        b.push_str(
            "<div class=\"scroll\"><table class=\"list compare\"><thead><tr><th>Change</th><th>What</th><th>Before</th>\
             <th>After</th></tr></thead><tbody>\n",
        );
        b.push_str(&rows.0);
        b.push_str("</tbody></table></div>\n");
    }
    properties_changed(&mut b, &d.properties_changed);
    Ok(page(&format!("Changes to {path}"), &crumbs, "", &b))
}

/// The longest value the compare page shows (in characters; the API has it whole).
const SHOWN_MAX: usize = 300;

/// "Properties changed": one table per group (the model, then each container, entity, relationship, view,
/// the definitions), a row per property.
fn properties_changed(b: &mut String, changes: &[crate::model::properties::PropertyChanged]) {
    use crate::model::properties::{grouped, shown, what};
    if changes.is_empty() {
        return;
    }
    let _ = write!(
        b,
        "<h2>Properties changed</h2>\n<p class=\"summary\">{} properties</p>\n",
        changes.len()
    );
    for (heading, group) in grouped(changes) {
        let _ = write!(
            b,
            "<h3>{}</h3>\n<div class=\"scroll\"><table class=\"list compare\"><thead><tr><th>Change</th>\
             <th>Property</th><th>Before</th><th>After</th></tr></thead><tbody>\n",
            esc(&heading)
        );
        let mut rows = Rows::default();
        for c in group {
            let (class, change) = match (&c.from, &c.to) {
                (None, _) => ("added", "added"),
                (_, None) => ("removed", "removed"),
                _ => ("changed", "changed"),
            };
            let (before, after) = (
                c.from.as_ref().map(|v| shown(Some(v), SHOWN_MAX)),
                c.to.as_ref().map(|v| shown(Some(v), SHOWN_MAX)),
            );
            rows.push(class, change, &what(c), before.as_deref(), after.as_deref());
        }
        b.push_str(&rows.0);
        b.push_str("</tbody></table></div>\n");
    }
}

/// The rows of the comparison table, as HTML.
#[derive(Default)]
struct Rows(String);

impl Rows {
    /// One row: its class (`added`, `removed`, `renamed`, `changed`), the change, what changed, and the
    /// values before and after (a dash when there is none).
    fn push(
        &mut self,
        class: &str,
        change: &str,
        what: &str,
        before: Option<&str>,
        after: Option<&str>,
    ) {
        let cell =
            |v: Option<&str>| v.map_or_else(|| "<span class=\"muted\">–</span>".to_string(), esc);
        let _ = write!(
            self.0,
            "<tr class=\"{class}\"><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(change),
            esc(what),
            cell(before),
            cell(after)
        );
    }

    /// A row per name that was added (`added`) or removed.
    fn names(&mut self, change: &str, names: &[String], added: bool) {
        let class = if added { "added" } else { "removed" };
        for n in names {
            let (before, after) = if added {
                (None, Some(n.as_str()))
            } else {
                (Some(n.as_str()), None)
            };
            self.push(class, change, n, before, after);
        }
    }
}

fn search(req: &Request<'_>, catalog: &Catalog<'_>) -> Page {
    let q = req.params.get("q").unwrap_or("");
    let crumbs = [("Repositories", "/".to_string()), ("Search", String::new())];
    if q.trim().is_empty() {
        let b = "<h1>Search</h1>\n<p>Type words into the search box: each is a prefix (<code>vacc</code> finds \
                 <em>Vaccination</em>), all must match, case and accents are ignored.</p>";
        return Ok(page("Search", &crumbs, "", b));
    }
    let kind = req
        .params
        .get("kind")
        .filter(|k| ["model", "entity", "attribute"].contains(k));
    let hits = catalog.search_marked(q, req.params.get("repo"), kind, 200, MARKS)?;
    // Grouped by model, in the order of each model's best hit.
    let mut groups: Vec<((&str, &str), Vec<&crate::store::SearchHit>)> = Vec::new();
    for h in &hits {
        let key = (h.repo.as_str(), h.path.as_str());
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, list)) => list.push(h),
            None => groups.push((key, vec![h])),
        }
    }
    let mut b = format!(
        "<h1>Search: {}</h1>\n<p class=\"summary\">{} hits in {} models{}</p>\n",
        esc(q),
        hits.len(),
        groups.len(),
        if hits.len() >= 200 {
            " (the best 200)"
        } else {
            ""
        }
    );
    for ((repo, path), list) in &groups {
        let model_name = list.iter().find_map(|h| h.model.as_deref()).unwrap_or(path);
        let _ = write!(
            b,
            "<section class=\"hit\"><h2><a href=\"{}\">{}</a> <span class=\"muted\"><code>{}</code> in {}</span></h2><ul>",
            link("/model", &[("repo", repo), ("path", path)]),
            esc(model_name),
            esc(path),
            esc(repo)
        );
        for h in list {
            let (what, fragment) =
                match (h.kind.as_str(), h.entity.as_deref(), h.attribute.as_deref()) {
                    ("attribute", Some(e), Some(a)) => (format!("{e}.{a}"), anchor("a", &[e, a])),
                    ("entity", Some(e), _) => (e.to_string(), anchor("e", &[e])),
                    _ => (model_name.to_string(), String::new()),
                };
            // The entity goes along: on a model too large for every tree, the page shows its tree.
            let href = match h.entity.as_deref() {
                Some(e) => link("/model", &[("repo", repo), ("path", path), ("entity", e)]),
                None => link("/model", &[("repo", repo), ("path", path)]),
            };
            let target = if fragment.is_empty() {
                href
            } else {
                format!("{href}#{fragment}")
            };
            let _ = write!(
                b,
                "<li><span class=\"kind\">{}</span> <a class=\"result\" href=\"{target}\">{}</a> \
                 <span class=\"snippet\">{}</span></li>",
                esc(&h.kind),
                esc(&what),
                highlight(&h.snippet)
            );
        }
        b.push_str("</ul></section>\n");
    }
    Ok(page(&format!("Search: {q}"), &crumbs, q, &b))
}

fn events(req: &Request<'_>, catalog: &Catalog<'_>) -> Page {
    let repo = req.params.get("repo");
    let kind = req.params.get("type").unwrap_or("");
    let outcome = req.params.get("outcome").unwrap_or("");
    let rows: Vec<EventRow> = catalog
        .events(repo, 1000)?
        .into_iter()
        .filter(|e| kind.is_empty() || e.kind == kind)
        .filter(|e| {
            outcome.is_empty()
                || e.outcome.as_deref() == Some(outcome)
                || e.result.as_deref() == Some(outcome)
        })
        .take(300)
        .collect();
    let mut b = String::from("<h1>Recent events</h1>\n");
    let select = |name: &str, current: &str, options: &[&str]| {
        let mut s = format!("<select name=\"{name}\"><option value=\"\">any</option>");
        for o in options {
            let sel = if *o == current { " selected" } else { "" };
            let _ = write!(s, "<option value=\"{o}\"{sel}>{o}</option>");
        }
        s.push_str("</select>");
        s
    };
    let _ = write!(
        b,
        "<form class=\"filters\" action=\"/events\" method=\"get\"><label>Repository \
         <input type=\"text\" name=\"repo\" value=\"{}\"></label> <label>Type {}</label> <label>Outcome {}</label> \
         <button type=\"submit\">Filter</button></form>",
        esc(repo.unwrap_or("")),
        select("type", kind, &["delivery", "poll", "status"]),
        select(
            "outcome",
            outcome,
            &[
                "polled",
                "ignored",
                "rejected",
                "updated",
                "unchanged",
                "empty",
                "error",
                "posted",
                "failed"
            ]
        ),
    );
    let _ = write!(
        b,
        "<p class=\"summary\">{} events, newest first</p>",
        rows.len()
    );
    b.push_str(
        "<div class=\"scroll\"><table class=\"list events\"><thead><tr><th>Time</th><th>Type</th><th>Repository</th>\
         <th>Detail</th></tr></thead><tbody>\n",
    );
    for e in &rows {
        let bad = matches!(e.outcome.as_deref(), Some("rejected" | "failed"))
            || e.result.as_deref() == Some("error");
        let _ = write!(
            b,
            "<tr{}><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            if bad { " class=\"failing\"" } else { "" },
            esc(&e.time),
            esc(&e.kind),
            e.repo.as_deref().map_or_else(
                || "–".into(),
                |r| format!(
                    "<a href=\"{}\">{}</a>",
                    link("/events", &[("repo", r)]),
                    esc(r)
                )
            ),
            esc(&crate::query::event_detail(e)),
        );
    }
    b.push_str("</tbody></table></div>\n");
    Ok(page(
        "Recent events",
        &[("Repositories", "/".into()), ("Events", String::new())],
        "",
        &b,
    ))
}
