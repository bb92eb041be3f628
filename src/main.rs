//! The `modelmirror` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use tracing::Level;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Prefix each line with its syslog priority (`<3>` error … `<7>` debug), which journald reads from a
/// service's stderr, so `journalctl -p warning` works.
struct Journald<F>(F);

impl<S, N, F> FormatEvent<S, N> for Journald<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let priority = match *event.metadata().level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            _ => 7,
        };
        write!(writer, "<{priority}>")?;
        self.0.format_event(ctx, writer, event)
    }
}

/// What is wrong with `RUST_LOG`, if it is set: a bad filter would silence the log instead of failing.
fn rust_log_problem() -> Option<String> {
    let value = std::env::var("RUST_LOG").ok()?;
    if value.trim().is_empty() {
        return None;
    }
    let problem = modelmirror::config::log_filter_problem(&value)?;
    Some(format!(
        "RUST_LOG = {value:?}: {problem}; {} (or unset RUST_LOG)",
        modelmirror::config::LOG_FILTER_HELP
    ))
}

fn init_logging(cli: &modelmirror::cli::Cli) {
    let settings = cli.log_settings();
    let default_level = if cli.is_service() { "info" } else { "warn" };
    // RUST_LOG wins over log_level, which wins over the default.
    // A blank RUST_LOG (`Environment=RUST_LOG=` in a drop-in) is as good as none: parsed, it would turn
    // every line off.
    let from_env = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .and_then(|v| EnvFilter::try_new(v).ok());
    let filter = from_env
        .or_else(|| {
            settings
                .level
                .as_deref()
                .and_then(|l| EnvFilter::try_new(l).ok())
        })
        .unwrap_or_else(|| EnvFilter::new(default_level));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if settings.json {
        builder.json().with_current_span(false).init();
    } else if under_journald {
        // journald adds its own timestamps; no colours.
        let format = tracing_subscriber::fmt::format()
            .without_time()
            .with_level(false)
            .with_ansi(false);
        builder
            .with_ansi(false)
            .event_format(Journald(format))
            .init();
    } else {
        builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
}

fn main() -> ExitCode {
    let cli = modelmirror::cli::Cli::parse();
    if let Some(problem) = rust_log_problem() {
        eprintln!("error: {}", modelmirror::cli::terminal(&problem));
        return ExitCode::from(2);
    }
    init_logging(&cli);
    match cli.execute() {
        Ok(code) => code,
        Err(e) => {
            let status = e.exit_status();
            eprintln!(
                "error: {}",
                modelmirror::cli::terminal_lines(&format!("{:#}", anyhow::Error::from(e)))
            );
            ExitCode::from(status)
        }
    }
}
