//! The command line: argument definitions and what each command prints. `--json` output is one JSON array
//! (or object, for single things) with documented keys; everything else is for people.

mod catalog;
mod check;
mod output;
mod rebuild;
mod run;
mod status;

pub use output::{terminal, terminal_lines};

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH, database_hint};
use crate::service;
use crate::store::StoreError;

#[derive(Debug, Parser)]
#[command(
    name = "modelmirror",
    version,
    about = "Keep a searchable SQLite replica of the data models kept in Git."
)]
pub struct Cli {
    /// Configuration file; every *.toml in the conf.d/ folder beside it is merged in.
    #[arg(long, global = true, env = "MODELMIRROR_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub(crate) config: PathBuf,
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Run as a service: poll every repository on its schedule until SIGTERM or SIGINT.
    Run,
    /// Serve the web catalog alone (`[web] listen`), read only and without polling, until SIGTERM or SIGINT:
    /// for a second host that reads a copy of the database, or to try the catalog out.
    Serve,
    /// Poll every (or each named) repository once now, print one line per repository, and exit
    /// (status 1 when any failed).
    Sync {
        /// Repository ids (`<provider>/<path>`); all configured repositories when none is given.
        repos: Vec<String>,
    },
    /// Show each repository's state: default branch, last processed commit, checks, models, errors.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// List the models in the catalog.
    Models {
        /// Only this repository.
        #[arg(long)]
        repo: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Full-text search over model, entity and attribute names, technical names, paths and descriptions.
    Search {
        /// Plain words (prefixes, all must match; case and accents ignored), or FTS5 query syntax.
        query: String,
        #[arg(long)]
        repo: Option<String>,
        /// model | entity | attribute
        #[arg(long, value_parser = ["model", "entity", "attribute"])]
        kind: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Every version of one model, newest first, following renames.
    History {
        repo: String,
        path: String,
        #[arg(long)]
        json: bool,
    },
    /// What changed inside a model between two versions (default: the last two).
    Changes {
        repo: String,
        path: String,
        /// The older version's commit (id or prefix).
        #[arg(long)]
        from: Option<String>,
        /// The newer version's commit (id or prefix).
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// One model in full: containers, entities with their attribute trees, relationships, views, definitions.
    Show {
        repo: String,
        path: String,
        /// A commit (id or prefix); the newest processed version by default.
        #[arg(long)]
        commit: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild the catalog of every (or each named) repository from its local mirror, with no network.
    Rebuild { repos: Vec<String> },
    /// Copy the SQLite catalog (`database`) into an empty PostgreSQL database: models, history, commits,
    /// polls, deliveries and the search index, nothing rebuilt. Then set `database` to that URL.
    Migrate {
        /// The PostgreSQL database: postgresql://USER@HOST:PORT/DATABASE (no password in it).
        #[arg(long, value_name = "URL")]
        to: String,
        /// A file holding the password alone.
        #[arg(long, value_name = "FILE")]
        password_file: Option<std::path::PathBuf>,
        /// An environment variable holding the password.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
    },
    /// Recent webhook deliveries, polls and commit statuses, newest first: what arrived, what it did, what the poll found, what the host was told.
    Events {
        /// Only this repository.
        #[arg(long)]
        repo: Option<String>,
        /// How many lines.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to standard output.
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff) to standard output, or with --dir write one page per command
    /// (modelmirror.1, modelmirror-check.1, ...) into that directory.
    Man {
        /// Write every page into this directory instead of printing the main one.
        #[arg(long, value_name = "DIR")]
        dir: Option<std::path::PathBuf>,
    },
    /// Check everything, like `nginx -t`: configuration, secrets, each provider's token and discovery, and
    /// each repository's refs. Exit status 0 only when every check passes.
    Check {
        #[arg(long)]
        json: bool,
    },
}

/// How to log.
#[derive(Debug, Default)]
pub struct LogSettings {
    pub level: Option<String>,
    pub json: bool,
}

/// Why a command failed, for `main` to print.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct Failure(CliError);

impl Failure {
    /// The exit status: 3 when another process runs under this `instance_name` (the systemd unit does not
    /// restart on it: a restart would be refused again), else 2.
    pub fn exit_status(&self) -> u8 {
        match &self.0 {
            CliError::Service(service::ServiceError::Store(StoreError::InstanceTaken {
                ..
            })) => 3,
            _ => 2,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("unknown repository `{0}`; `modelmirror status` lists the configured ones")]
    UnknownRepo(String),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("cannot write output: {0}")]
    Output(std::io::Error),
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Secrets(Vec<crate::config::ProviderIssue>),
    #[error(transparent)]
    Git(#[from] crate::git::GitError),
    #[error(transparent)]
    Service(#[from] service::ServiceError),
    #[error(transparent)]
    Query(#[from] crate::query::QueryError),
    /// A command's arguments cannot work (the message says which and why).
    #[error("{0}")]
    Usage(String),
}

impl Cli {
    /// Whether the command is the service (it logs at info by default; the others at warn).
    pub fn is_service(&self) -> bool {
        matches!(self.command, Command::Run | Command::Serve)
    }

    /// `log_level` and `log_format` from the configuration, if it loads (its errors are reported later).
    pub fn log_settings(&self) -> LogSettings {
        match Config::load(&self.config) {
            Ok(c) => LogSettings {
                level: c.log_level,
                json: c.log_json,
            },
            Err(_) => LogSettings::default(),
        }
    }

    /// Run the command. The error's message says what went wrong and what to do.
    pub fn execute(self) -> Result<ExitCode, Failure> {
        self.run().map_err(Failure)
    }

    fn run(self) -> Result<ExitCode, CliError> {
        match self.command {
            Command::Check { json } => return check::check(&self.config, json),
            Command::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "modelmirror", &mut std::io::stdout());
                return Ok(ExitCode::SUCCESS);
            }
            Command::Man { dir } => {
                let cmd = <Cli as clap::CommandFactory>::command();
                match dir {
                    Some(dir) => clap_mangen::generate_to(cmd, dir),
                    None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
                }
                .map_err(CliError::Output)?;
                return Ok(ExitCode::SUCCESS);
            }
            _ => {}
        }
        let config = match Config::load(&self.config) {
            Ok(c) => c,
            // `status` still shows the service's state (and a rejected reload) with a broken file on disk.
            // With no database there is nothing to show: the error alone, printed once by `main`.
            Err(e) => match self.command {
                Command::Status { json }
                    if database_hint(&self.config)
                        .sqlite_path()
                        .is_none_or(std::path::Path::exists) =>
                {
                    let database = database_hint(&self.config);
                    eprintln!(
                        "error: {}\n(showing the state recorded in {}; the running service keeps the configuration it loaded last)",
                        output::terminal_lines(&e.to_string()),
                        database
                    );
                    status::status(&database, None, json)?;
                    return Ok(ExitCode::from(2));
                }
                _ => return Err(e.into()),
            },
        };
        match self.command {
            Command::Run => {
                run::prepare(&config)?;
                run::run(config)
            }
            Command::Serve => run::serve(config),
            Command::Sync { repos } => {
                run::prepare(&config)?;
                run::sync(config, &repos)
            }
            Command::Status { json } => status::status(&config.database, Some(&config), json),
            Command::Models { repo, json } => catalog::models(&config, repo.as_deref(), json),
            Command::Events { repo, limit, json } => {
                status::events(&config, repo.as_deref(), limit, json)
            }
            Command::Search {
                query,
                repo,
                kind,
                limit,
                json,
            } => catalog::search(
                &config,
                &query,
                repo.as_deref(),
                kind.as_deref(),
                limit,
                json,
            ),
            Command::History { repo, path, json } => catalog::history(&config, &repo, &path, json),
            Command::Changes {
                repo,
                path,
                from,
                to,
                json,
            } => catalog::changes(&config, &repo, &path, from.as_deref(), to.as_deref(), json),
            Command::Show {
                repo,
                path,
                commit,
                json,
            } => catalog::show(&config, &repo, &path, commit.as_deref(), json),
            Command::Rebuild { repos } => rebuild::rebuild(config, &repos),
            Command::Migrate {
                to,
                password_file,
                password_env,
            } => rebuild::migrate(
                &config,
                &to,
                password_file.as_deref(),
                password_env.as_deref(),
            ),
            Command::Check { .. } | Command::Completions { .. } | Command::Man { .. } => {
                Ok(ExitCode::SUCCESS)
            }
        }
    }
}
