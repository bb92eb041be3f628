//! What the commands print: `--json` as one pretty JSON document, tables as aligned columns.

use std::io::Write;

use serde::Serialize;

use super::CliError;

pub(super) fn print_json<T: Serialize>(rows: &T) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, rows)
        .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
    writeln!(out).map_err(CliError::Output)
}

/// Print rows as aligned columns.
pub(super) fn print_table(header: &[&str], rows: Vec<Vec<String>>) -> Result<(), CliError> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let mut out = std::io::stdout().lock();
    let mut line = |cells: Vec<String>| {
        let last = cells.len().saturating_sub(1);
        let text: Vec<String> = cells
            .into_iter()
            .enumerate()
            .map(|(i, c)| {
                if i == last {
                    c
                } else {
                    format!("{c:<w$}", w = widths[i])
                }
            })
            .collect();
        writeln!(out, "{}", text.join("  ").trim_end())
    };
    line(header.iter().map(|h| h.to_string()).collect()).map_err(CliError::Output)?;
    for row in rows {
        line(row).map_err(CliError::Output)?;
    }
    Ok(())
}

pub(super) fn or_dash(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}
