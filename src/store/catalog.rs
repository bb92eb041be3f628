//! Reading the catalog: repository status, models, full-text search, a model's history.

use serde::Serialize;

use super::db::{Engine, params};
use super::{Doing, Store, StoreError, now_rfc3339};

/// A processed commit.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CommitRow {
    pub(crate) commit: String,
    pub(crate) author: String,
    pub(crate) author_email: String,
    /// Commit time, RFC 3339.
    pub(crate) time: String,
    pub(crate) message: String,
}

/// A row of `modelmirror status`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RepoStatus {
    pub(crate) repo: String,
    pub(crate) url: String,
    /// active | empty | archived | removed (`status` adds unconfigured)
    pub(crate) state: String,
    /// configured | discovered: how the repository came to be mirrored.
    pub(crate) origin: String,
    pub(crate) state_reason: Option<String>,
    pub(crate) provider_id: Option<String>,
    pub(crate) web_url: Option<String>,
    /// When the repository's provider is held back by rate limits, until when and why.
    pub(crate) held_until: Option<String>,
    pub(crate) held_reason: Option<String>,
    /// The instance holding the repository's lease now (several instances on PostgreSQL).
    pub(crate) instance: Option<String>,
    pub(crate) default_branch: Option<String>,
    pub(crate) commit: Option<String>,
    pub(crate) last_check_at: Option<String>,
    /// The last poll that succeeded.
    pub(crate) last_success_at: Option<String>,
    pub(crate) last_change_at: Option<String>,
    pub(crate) models: i64,
    pub(crate) errors: i64,
    pub(crate) last_error: Option<String>,
}

/// A provider as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ProviderStatus {
    pub(crate) provider: String,
    pub(crate) last_discovery_at: Option<String>,
    pub(crate) last_discovery_error: Option<String>,
    pub(crate) repos_found: Option<i64>,
    pub(crate) held_until: Option<String>,
    pub(crate) held_reason: Option<String>,
}

/// A row of `modelmirror models`.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ModelRow {
    pub(crate) repo: String,
    pub(crate) path: String,
    pub(crate) name: Option<String>,
    pub(crate) target: Option<String>,
    pub(crate) entities: i64,
    pub(crate) attributes: i64,
    pub(crate) commit: String,
    pub(crate) blob: String,
    pub(crate) status: String,
    pub(crate) error: Option<String>,
}

/// A search hit.
#[derive(Debug, Clone, Serialize)]
pub struct SearchHit {
    pub(crate) repo: String,
    pub(crate) path: String,
    pub(crate) model: Option<String>,
    pub(crate) entity: Option<String>,
    /// The attribute's path, or null for model and entity hits.
    pub(crate) attribute: Option<String>,
    /// model | entity | attribute
    pub(crate) kind: String,
    pub(crate) snippet: String,
}

/// One version of a model (`history`).
#[derive(Debug, Clone, Serialize)]
pub struct VersionRow {
    #[serde(skip)]
    pub(crate) seq: i64,
    pub(crate) path: String,
    pub(crate) commit: String,
    /// added | modified | renamed | deleted
    pub(crate) change: String,
    pub(crate) old_path: Option<String>,
    pub(crate) blob: Option<String>,
    pub(crate) model: Option<String>,
    pub(crate) entities: Option<i64>,
    pub(crate) attributes: Option<i64>,
    pub(crate) error: Option<String>,
    pub(crate) author: Option<String>,
    pub(crate) author_email: Option<String>,
    pub(crate) time: Option<String>,
    pub(crate) message: Option<String>,
}

/// What `status` reads of each repository (`?2`: now, to compare lease expiries with).
const STATUS_SQL: &str =
    "SELECT r.id, r.url, r.default_branch, r.commit_id, r.last_check_at, r.last_change_at,
        (SELECT COUNT(*) FROM models m WHERE m.repo_id = r.id AND m.status = 'ok'),
        (SELECT COUNT(*) FROM models m WHERE m.repo_id = r.id AND m.status = 'error'),
        r.last_error, r.state, r.state_reason, r.provider_repo_id, r.web_url,
        CASE WHEN p.held_until > ?1 THEN p.held_until END,
        CASE WHEN p.held_until > ?1 THEN p.held_reason END, r.last_success_at, r.origin,
        (SELECT l.lease_owner FROM leases l WHERE l.name = r.id AND l.lease_expires_at > ?2)
    FROM repos r LEFT JOIN providers p ON p.name = r.provider ORDER BY r.id";

impl Store {
    /// A token that changes whenever what the catalog answers may change: every write to the tables behind
    /// the answers bumps a counter (triggers, so no write path can forget it), and a provider's hold that
    /// ends changes the repositories' answer without a write. For HTTP `ETag`s.
    pub(crate) fn catalog_version(&self) -> Result<String, StoreError> {
        let mut conn = self.lock();
        conn.query_one(
            "SELECT CAST((SELECT n FROM catalog_generation WHERE id = 1) AS TEXT) || '.' ||
                    CAST((SELECT COUNT(*) FROM providers WHERE held_until > ?1) AS TEXT)",
            params![now_rfc3339()],
            |r| r.get(0),
        )
        .doing("reading the catalog's version")
    }

    /// Who made a processed commit, when, and why.
    pub(crate) fn commit(&self, repo: &str, id: &str) -> Result<Option<CommitRow>, StoreError> {
        let mut conn = self.lock();
        conn.query_opt(
            "SELECT commit_id, author_name, author_email, committed_at, message FROM commits
             WHERE repo_id = ?1 AND commit_id = ?2",
            params![repo, id],
            |r| {
                Ok(CommitRow {
                    commit: r.get(0)?,
                    author: r.get(1)?,
                    author_email: r.get(2)?,
                    time: r.get(3)?,
                    message: r.get(4)?,
                })
            },
        )
        .doing("reading a commit")
    }

    pub(crate) fn status(&self) -> Result<Vec<RepoStatus>, StoreError> {
        let mut conn = self.lock();
        // Leases expire by the database server's clock (PostgreSQL; SQLite has none).
        let sql = STATUS_SQL.replace(
            "?2",
            match conn.engine() {
                super::db::Engine::Sqlite => "?2",
                super::db::Engine::Postgres => "modelmirror_time(now())",
            },
        );
        let millis = super::now_rfc3339_millis();
        let params = match conn.engine() {
            super::db::Engine::Sqlite => params![now_rfc3339(), millis],
            super::db::Engine::Postgres => params![now_rfc3339()],
        };
        conn.query(&sql, params, |r| {
            Ok(RepoStatus {
                repo: r.get(0)?,
                url: r.get(1)?,
                state: r.get(9)?,
                origin: r.get(16)?,
                state_reason: r.get(10)?,
                provider_id: r.get(11)?,
                web_url: r.get(12)?,
                held_until: r.get(13)?,
                held_reason: r.get(14)?,
                instance: r.get(17)?,
                default_branch: r.get(2)?,
                commit: r.get(3)?,
                last_check_at: r.get(4)?,
                last_success_at: r.get(15)?,
                last_change_at: r.get(5)?,
                models: r.get(6)?,
                errors: r.get(7)?,
                last_error: r.get(8)?,
            })
        })
        .doing("reading the status")
    }

    /// What `status` shows about providers: (name, last discovery, its error, repositories found).
    pub(crate) fn provider_status(&self) -> Result<Vec<ProviderStatus>, StoreError> {
        let mut conn = self.lock();
        conn.query(
                "SELECT name, last_discovery_at, last_discovery_error, repos_found,
                        CASE WHEN held_until > ?1 THEN held_until END, CASE WHEN held_until > ?1 THEN held_reason END
                 FROM providers ORDER BY name",
            params![now_rfc3339()], |r| {
                Ok(ProviderStatus {
                    provider: r.get(0)?,
                    last_discovery_at: r.get(1)?,
                    last_discovery_error: r.get(2)?,
                    repos_found: r.get(3)?,
                    held_until: r.get(4)?,
                    held_reason: r.get(5)?,
                })
            })
            .doing("reading providers")
    }

    pub(crate) fn models(&self, repo: Option<&str>) -> Result<Vec<ModelRow>, StoreError> {
        self.model_rows(repo, None)
    }

    /// The current row of one model, when the catalog has it.
    pub(crate) fn model_row(&self, repo: &str, path: &str) -> Result<Option<ModelRow>, StoreError> {
        Ok(self.model_rows(Some(repo), Some(path))?.pop())
    }

    fn model_rows(
        &self,
        repo: Option<&str>,
        path: Option<&str>,
    ) -> Result<Vec<ModelRow>, StoreError> {
        let mut conn = self.lock();
        conn.query(
                "SELECT repo_id, path, name, db_vendor, entity_count, attribute_count, commit_id, blob, status, error
                 FROM models WHERE (CAST(?1 AS TEXT) IS NULL OR repo_id = ?1) AND (CAST(?2 AS TEXT) IS NULL OR path = ?2)
                 ORDER BY repo_id, path",
            params![repo, path], |r| {
                Ok(ModelRow {
                    repo: r.get(0)?,
                    path: r.get(1)?,
                    name: r.get(2)?,
                    target: r.get(3)?,
                    entities: r.get(4)?,
                    attributes: r.get(5)?,
                    commit: r.get(6)?,
                    blob: r.get(7)?,
                    status: r.get(8)?,
                    error: r.get(9)?,
                })
            })
            .doing("listing models")
    }

    /// Full-text search for what a person typed (see [`fts_query`] for how words are read). The snippets mark
    /// matched words with `[` and `]`.
    pub fn search(
        &self,
        words: &str,
        repo: Option<&str>,
        kind: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SearchHit>, StoreError> {
        self.search_marked(words, repo, kind, limit, ("[", "]"))
    }

    /// [`Store::search`] with the snippets' matched words between `marks`.
    pub(crate) fn search_marked(
        &self,
        words: &str,
        repo: Option<&str>,
        kind: Option<&str>,
        limit: usize,
        marks: (&str, &str),
    ) -> Result<Vec<SearchHit>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let hit = |r: &super::db::Row<'_>| {
            Ok(SearchHit {
                kind: r.get(0)?,
                repo: r.get(1)?,
                path: r.get(2)?,
                model: r.get(3)?,
                entity: r.get(4)?,
                attribute: r.get(5)?,
                snippet: r.get(6)?,
            })
        };
        let mut conn = self.lock();
        let (query, rows) = match conn.engine() {
            Engine::Sqlite => {
                let query = fts_query(words);
                let rows = conn.query(
                    "SELECT s.kind, m.repo_id, m.path, m.name, e.name, a.path,
                            snippet(search, -1, ?5, ?6, '…', 12)
                     FROM search s
                     JOIN models m ON m.id = s.model_id
                     LEFT JOIN attributes a ON s.kind = 'attribute' AND a.id = s.rowid / 4
                     LEFT JOIN entities e ON e.id = CASE s.kind WHEN 'entity' THEN s.rowid / 4
                                                                WHEN 'attribute' THEN a.entity_id END
                     WHERE search MATCH ?1 AND (CAST(?2 AS TEXT) IS NULL OR m.repo_id = ?2) AND (CAST(?3 AS TEXT) IS NULL OR s.kind = ?3)
                     ORDER BY bm25(search, 10.0, 6.0, 3.0, 1.0) LIMIT ?4",
                    params![query, repo, kind, limit, marks.0, marks.1],
                    hit,
                );
                (query, rows)
            }
            Engine::Postgres => {
                let (query, plain) = ts_query(words);
                // PostgreSQL's web-search syntax takes anything; a quote left open is refused, as SQLite
                // refuses it, so a search means the same on both.
                if !plain && query.matches('"').count() % 2 == 1 {
                    return Err(StoreError::Query(format!(
                        "cannot understand the search {:?} (a quote is not closed); use plain words, or search syntax",
                        query.chars().take(200).collect::<String>()
                    )));
                }
                let options = format!(
                    "StartSel=\"{}\", StopSel=\"{}\", MaxWords=12, MinWords=4, FragmentDelimiter=\" … \"",
                    marks.0.replace('"', ""),
                    marks.1.replace('"', "")
                );
                // The 12 best hits first, then their snippets (ts_headline reads the text again: only for
                // those shown). Weights: description, path, code, name (as SQLite's bm25 weights 1, 3, 6, 10).
                let rows = conn.query(
                    "WITH q AS (SELECT CASE WHEN ?6 THEN to_tsquery('simple', modelmirror_fold(?1))
                                            ELSE websearch_to_tsquery('simple', modelmirror_fold(?1)) END AS q),
                     hits AS (
                         SELECT s.id, s.kind, s.model_id, s.name, s.code, s.path, s.description,
                                ts_rank('{0.1, 0.3, 0.6, 1.0}', s.words, q.q) AS rank
                         FROM search s JOIN models m ON m.id = s.model_id, q
                         WHERE s.words @@ q.q AND (CAST(?2 AS TEXT) IS NULL OR m.repo_id = ?2) AND (CAST(?3 AS TEXT) IS NULL OR s.kind = ?3)
                         ORDER BY rank DESC, s.id LIMIT ?4)
                     SELECT h.kind, m.repo_id, m.path, m.name, e.name, a.path,
                            ts_headline('simple', concat_ws(' ', h.name, h.code, h.path, h.description), q.q, ?5)
                     FROM hits h CROSS JOIN q
                     JOIN models m ON m.id = h.model_id
                     LEFT JOIN attributes a ON h.kind = 'attribute' AND a.id = h.id / 4
                     LEFT JOIN entities e ON e.id = CASE h.kind WHEN 'entity' THEN h.id / 4
                                                                WHEN 'attribute' THEN a.entity_id END
                     ORDER BY h.rank DESC, h.id",
                    params![query, repo, kind, limit, options, plain],
                    hit,
                );
                (query, rows)
            }
        };
        // The statements are fixed; only the query text can make them fail here (or a lost connection).
        rows.map_err(|e| match e.is_disconnect() {
            true => StoreError::Sql {
                doing: "searching".into(),
                error: e,
            },
            false => StoreError::Query(format!(
                "cannot understand the search {:?} ({e}); use plain words, or FTS5 query syntax",
                query.chars().take(200).collect::<String>()
            )),
        })
    }

    /// Every version of the model at `path`, newest first, following renames back to the first version.
    pub fn history(&self, repo: &str, path: &str) -> Result<Vec<VersionRow>, StoreError> {
        let mut conn = self.lock();
        // The versions at a path, plus the renames that took a model away from it ("renamed to …").
        let sql = "SELECT v.id, v.path, v.commit_id, v.change, v.old_path, v.blob, v.name, v.entity_count,
                        v.attribute_count, v.error, c.author_name, c.author_email, c.committed_at, c.message,
                        v.path = ?2
                 FROM model_versions v
                 LEFT JOIN commits c ON c.repo_id = v.repo_id AND c.commit_id = v.commit_id
                 WHERE v.repo_id = ?1 AND (v.path = ?2 OR (v.old_path = ?2 AND v.change = 'renamed')) AND v.id < ?3
                 ORDER BY v.id DESC";
        let mut out = Vec::new();
        let mut current = path.to_string();
        let mut before = i64::MAX;
        // Each rename into the path sends the walk to the old path, before the rename.
        for _ in 0..10_000 {
            let rows = conn
                .query(sql, params![repo, current, before], |r| {
                    let here: bool = r.get(14)?;
                    let new_path: String = r.get(1)?;
                    Ok(VersionRow {
                        seq: r.get(0)?,
                        path: if here {
                            new_path.clone()
                        } else {
                            current.clone()
                        },
                        commit: r.get(2)?,
                        change: if here {
                            r.get(3)?
                        } else {
                            format!("renamed to {new_path}")
                        },
                        old_path: if here { r.get(4)? } else { None },
                        blob: if here { r.get(5)? } else { None },
                        model: if here { r.get(6)? } else { None },
                        entities: if here { r.get(7)? } else { None },
                        attributes: if here { r.get(8)? } else { None },
                        error: if here { r.get(9)? } else { None },
                        author: r.get(10)?,
                        author_email: r.get(11)?,
                        time: r.get(12)?,
                        message: r.get(13)?,
                    })
                })
                .doing("reading the history")?;
            let mut next = None;
            for row in rows {
                let renamed_in = (row.change == "renamed").then(|| (row.old_path.clone(), row.seq));
                out.push(row);
                if let Some((Some(old), seq)) = renamed_in {
                    next = Some((old, seq));
                    break;
                }
            }
            match next {
                Some((old, seq)) => {
                    current = old;
                    before = seq;
                }
                None => break,
            }
        }
        Ok(out)
    }
}

/// What a person types as a PostgreSQL `tsquery` and whether it is one for `to_tsquery` (plain words: each a
/// prefix term, all required; a word such as `customer_id` is the phrase `customer <-> id:*`, as SQLite
/// splits it) or text for `websearch_to_tsquery` (a query using search syntax on purpose, by the same test as
/// [`fts_query`]: quoted phrases, `OR`, `-word`; FTS5's column filters and `NEAR` have no equivalent there).
pub(crate) fn ts_query(input: &str) -> (String, bool) {
    if fts_query(input) == input && !input.trim().is_empty() {
        return (input.to_string(), false);
    }
    let terms: Vec<String> = input
        .split_whitespace()
        .filter_map(|w| {
            let tokens: Vec<String> = w
                .split(|c: char| !c.is_alphanumeric())
                .filter(|t| !t.is_empty())
                .map(str::to_lowercase)
                .collect();
            (!tokens.is_empty()).then(|| format!("{}:*", tokens.join(" <-> ")))
        })
        .collect();
    (terms.join(" & "), true)
}

/// Turn what a person types into an FTS5 query: plain words become prefix terms that must all match (case
/// and accents ignored by the index). A query that uses FTS5 syntax on purpose — a quote, a parenthesis, a
/// word that is exactly AND / OR / NOT, `NEAR(`, or a column filter (`name:`, `code:`, `path:`,
/// `description:`) — is passed on as written. Anything else (colons in `ns:field`, URLs, `^`, `-`) is text.
pub fn fts_query(input: &str) -> String {
    let columns = [
        "name:",
        "code:",
        "path:",
        "description:",
        "kind:",
        "-name:",
        "-code:",
        "-path:",
        "-description:",
    ];
    let words: Vec<&str> = input.split_whitespace().collect();
    // AND/OR/NOT are operators only between two other words; alone, first
    // or last they are plain search terms ("AND" finds "ANDROID").
    let operator =
        |i: usize| matches!(words[i], "AND" | "OR" | "NOT") && i > 0 && i + 1 < words.len();
    let advanced = input.contains(['"', '(', ')'])
        || words.iter().enumerate().any(|(i, w)| {
            operator(i) || w.starts_with("NEAR(") || columns.iter().any(|c| w.starts_with(c))
        });
    if advanced {
        return input.to_string();
    }
    input
        .split_whitespace()
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}
