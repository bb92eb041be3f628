//! The `modelmirror` binary: parse the command line, set up logging, run the command.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = modelmirror::cli::Cli::parse();
    let default_level = if cli.is_service() { "info" } else { "warn" };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let under_journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!under_journald && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if under_journald {
        builder.without_time().init();
    } else {
        builder.init();
    }
    match cli.execute() {
        Ok(code) => code,
        Err(e) => {
            let e = anyhow::Error::from(e);
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
