//! What the commands print: `--json` as one pretty JSON document, tables as aligned columns. Human output
//! goes through [`terminal`]: names, paths and messages come from model files and hosts, and must not be
//! able to drive the terminal.

use std::borrow::Cow;
use std::io::Write;

use serde::Serialize;

use super::CliError;

pub(super) fn print_json<T: Serialize>(rows: &T) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, rows)
        .map_err(|e| CliError::Output(std::io::Error::other(e)))?;
    writeln!(out).map_err(CliError::Output)
}

/// `text` fit for a terminal: control characters (escape sequences, carriage returns, line breaks, tabs)
/// shown as escapes (`\u{1b}`, `\n`), so a file named with them can neither recolour the terminal, set its
/// title, nor split a line or a table row. `--json` needs none of this: JSON escapes them itself.
pub fn terminal(text: &str) -> Cow<'_, str> {
    terminal_keeping(text, false)
}

/// Like [`terminal`], but keeping line breaks: for messages that are several lines by design.
pub fn terminal_lines(text: &str) -> Cow<'_, str> {
    terminal_keeping(text, true)
}

/// Characters that change how the text around them is shown without being visible themselves: bidirectional
/// overrides and isolates (which can reorder a row, "Trojan Source"), zero-width characters, the BOM.
fn invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'
            | '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{2028}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{E0000}'..='\u{E007F}'
    )
}

fn terminal_keeping(text: &str, newlines: bool) -> Cow<'_, str> {
    let unsafe_char = |c: char| (c.is_control() && !(newlines && c == '\n')) || invisible_format(c);
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' if !newlines => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if unsafe_char(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Print lines of human output, each made fit for a terminal.
pub(super) fn print_lines<S: AsRef<str>>(
    lines: impl IntoIterator<Item = S>,
) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    for l in lines {
        writeln!(out, "{}", terminal(l.as_ref())).map_err(CliError::Output)?;
    }
    Ok(())
}

/// Print rows as aligned columns.
pub(super) fn print_table(header: &[&str], rows: Vec<Vec<String>>) -> Result<(), CliError> {
    let rows: Vec<Vec<String>> = rows
        .into_iter()
        .map(|r| r.into_iter().map(|c| terminal(&c).into_owned()).collect())
        .collect();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_not_obeyed() {
        assert_eq!(terminal("plain – text"), "plain – text");
        assert_eq!(
            terminal("a\u{1b}]0;owned\u{7}b\nc\rd\te\u{9b}"),
            "a\\u{1b}]0;owned\\u{7}b\\nc\\rd\\te\\u{9b}"
        );
        assert_eq!(terminal_lines("one\ntwo\u{1b}[2J"), "one\ntwo\\u{1b}[2J");
        assert_eq!(
            terminal("abc\u{202e}fed\u{200b}"),
            "abc\\u{202e}fed\\u{200b}"
        );
    }
}
