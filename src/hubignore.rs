//! `.hubignore`: which files of a repository the Hackolade Model Hub (and so modelmirror) leaves out, in gitignore syntax. Pure functions, no I/O.
//!
//! The rules are git's own (`man gitignore`, `dir.c` and `wildmatch.c` of git), ported rather than approximated
//! with a glob library, so that `git check-ignore --no-index` and [`HubIgnore::is_ignored`] agree:
//!
//! - the text may start with a UTF-8 BOM; lines end with `\n` or `\r\n`;
//! - blank lines and lines starting with `#` are skipped; `\#` and `\!` start a pattern with a literal `#` or `!`;
//! - trailing spaces are dropped unless escaped (`foo\ ` keeps one);
//! - `!` re-includes what an earlier pattern left out, but never a file below a left-out directory;
//! - a trailing `/` makes a pattern match directories only (and so everything below them);
//! - a pattern with a `/` at the start or in the middle is anchored at the repository root; otherwise it matches
//!   at any depth (`name` ≡ `**/name`);
//! - `*` and `?` never match `/`; `[...]` classes (`[!...]`, `[^...]`, ranges, `[:alpha:]` and the other POSIX
//!   classes); `**/` at the start, `/**` at the end and `/**/` in the middle match across directories;
//! - the last pattern that matches decides.
//!
//! One deliberate difference: git matches bytes, this module matches characters, so `?` and `[...]` take one
//! whole non-ASCII character (git needs `??` for an `é`). Everything ASCII is byte-for-byte git's behaviour.

/// The file at a repository's root that lists models and folders to leave out.
pub(crate) const FILE: &str = ".hubignore";

/// Compiled `.hubignore` rules, in file order.
#[derive(Debug, Clone, Default)]
pub(crate) struct HubIgnore {
    rules: Vec<Rule>,
}

/// One pattern line, as git's `parse_path_pattern` leaves it.
#[derive(Debug, Clone)]
struct Rule {
    /// The pattern without its `!`, its trailing `/` and (for anchored rules) its leading `/`.
    pattern: Box<str>,
    /// Bytes at the start of `pattern` before its first `*`, `?`, `[` or `\` (git's `nowildcardlen`).
    literal_prefix: usize,
    /// Started with `!`: re-includes.
    negated: bool,
    /// Ended with `/`: matches directories only.
    dir_only: bool,
    /// No `/` (besides a trailing one): matched against the last component of a path, at any depth.
    basename: bool,
}

/// At most this many runs of `*` in one pattern: each may recurse once while matching.
const MAX_STAR_RUNS: usize = 64;

/// At most this many (recursive) matcher steps for one pattern against one path; past it the pattern does not
/// match. Real patterns need a few hundred at most; this only bounds pathological ones such as `**/**/**/…`.
const MATCH_BUDGET: u32 = 100_000;

impl HubIgnore {
    /// Compile the text of a `.hubignore`. Lines that are not valid patterns are skipped (and returned as warnings) — never an error, never a panic.
    ///
    /// Skipped lines are those git keeps but that can never match anything: an unclosed `[`, an unknown
    /// `[:class:]`, a trailing unescaped `\`, a bare `!` or `/`; and patterns with more than 64 runs of `*`.
    #[must_use]
    pub(crate) fn parse(text: &str) -> (HubIgnore, Vec<String>) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut rules = Vec::new();
        let mut warnings = Vec::new();
        for (index, raw) in text.split('\n').enumerate() {
            // git tests the raw line (before dropping `\r`) for emptiness and for `#`.
            if raw.is_empty() || raw.starts_with('#') {
                continue;
            }
            let line = raw.strip_suffix('\r').unwrap_or(raw);
            // git holds each line as a C string: anything after a NUL is lost.
            let line = line.split('\0').next().unwrap_or_default();
            let line = trim_trailing_spaces(line);
            match Rule::compile(line) {
                Ok(Some(rule)) => rules.push(rule),
                Ok(None) => {}
                Err(reason) => warnings.push(format!(
                    ".hubignore line {}: `{}` skipped: {reason}",
                    index + 1,
                    line.escape_debug()
                )),
            }
        }
        (HubIgnore { rules }, warnings)
    }

    /// An empty rule set: nothing is ignored.
    #[must_use]
    pub(crate) fn none() -> HubIgnore {
        HubIgnore::default()
    }

    /// Whether the file at `path` (relative to the repository root, `/`-separated, no leading `/`) is left out.
    ///
    /// A path ending in `/` is taken as a directory (so directory-only patterns apply to it too): the answer
    /// then tells whether everything below it is left out.
    #[must_use]
    pub(crate) fn is_ignored(&self, path: &str) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let (path, is_dir) = match path.strip_suffix('/') {
            Some(dir) => (dir, true),
            None => (path, false),
        };
        let path = path.trim_start_matches('/');
        if path.is_empty() {
            return false;
        }
        // Like git's prep_exclude: a left-out directory leaves out everything below it, whatever follows.
        for (slash, _) in path.match_indices('/') {
            if self
                .last_match(&path[..slash], true)
                .is_some_and(|rule| !rule.negated)
            {
                return true;
            }
        }
        self.last_match(path, is_dir)
            .is_some_and(|rule| !rule.negated)
    }

    /// Whether there are no rules at all.
    #[must_use]
    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The last rule that matches `path` (git's `last_matching_pattern_from_list`).
    fn last_match(&self, path: &str, is_dir: bool) -> Option<&Rule> {
        let basename = path.rsplit('/').next().unwrap_or(path);
        self.rules
            .iter()
            .rev()
            .find(|rule| (is_dir || !rule.dir_only) && rule.matches(path, basename))
    }
}

impl Rule {
    /// Compile one line (already trimmed); `Ok(None)` for a line that holds no pattern.
    fn compile(line: &str) -> Result<Option<Rule>, &'static str> {
        if line.is_empty() {
            return Ok(None);
        }
        let (negated, pattern) = match line.strip_prefix('!') {
            Some(rest) => (true, rest),
            None => (false, line),
        };
        let (dir_only, pattern) = match pattern.strip_suffix('/') {
            Some(rest) => (true, rest),
            None => (false, pattern),
        };
        if pattern.is_empty() {
            return Err("no pattern, so it matches nothing");
        }
        check_syntax(pattern)?;
        let basename = !pattern.contains('/');
        let mut literal_prefix = pattern
            .bytes()
            .position(is_glob_special)
            .unwrap_or(pattern.len());
        let mut pattern = pattern;
        if !basename && let Some(rest) = pattern.strip_prefix('/') {
            pattern = rest;
            literal_prefix -= 1;
        }
        Ok(Some(Rule {
            pattern: pattern.into(),
            literal_prefix,
            negated,
            dir_only,
            basename,
        }))
    }

    /// git's `match_basename` / `match_pathname` (with an empty base: the `.hubignore` is at the root).
    fn matches(&self, path: &str, basename: &str) -> bool {
        if self.basename {
            // git matches these without WM_PATHNAME; with no `/` in pattern or name that is the same thing.
            return wildmatch(&self.pattern, basename);
        }
        // git compares the literal prefix first and wildmatches the rest from there, so a `**` right after the
        // prefix counts as the start of a pattern (`a**/b` matches `ax/y/b`); this keeps that quirk.
        let (literal, rest) = self.pattern.split_at(self.literal_prefix);
        match path.strip_prefix(literal) {
            Some(name) if rest.is_empty() => name.is_empty(),
            Some(name) => wildmatch(rest, name),
            None => false,
        }
    }
}

/// git's `trim_trailing_spaces`: drop trailing spaces (not tabs), except one escaped with `\`.
fn trim_trailing_spaces(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut last_space = None;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b' ' => {
                if last_space.is_none() {
                    last_space = Some(i);
                }
            }
            b'\\' => {
                i += 1;
                if i == bytes.len() {
                    return line;
                }
                last_space = None;
            }
            _ => last_space = None,
        }
        i += 1;
    }
    match last_space {
        Some(end) => &line[..end],
        None => line,
    }
}

/// git's `is_glob_special`.
fn is_glob_special(byte: u8) -> bool {
    matches!(byte, b'*' | b'?' | b'[' | b'\\')
}

/// Reject what wildmatch would abort on (and so never match), scanning the way wildmatch does.
fn check_syntax(pattern: &str) -> Result<(), &'static str> {
    let bytes = pattern.as_bytes();
    let mut star_runs = 0;
    let mut i = 0;
    while let Some(c) = char_at(pattern, i) {
        match c {
            '\\' => match char_at(pattern, i + 1) {
                Some(escaped) => i += 1 + escaped.len_utf8(),
                None => return Err("it ends with a lone `\\`, so it matches nothing"),
            },
            '[' => i = bracket(pattern, i, 'a')?.1 + 1,
            '*' => {
                star_runs += 1;
                while bytes.get(i) == Some(&b'*') {
                    i += 1;
                }
            }
            _ => i += c.len_utf8(),
        }
    }
    if star_runs > MAX_STAR_RUNS {
        return Err("more than 64 runs of `*`");
    }
    Ok(())
}

/// The character starting at byte `i` of `s`, if any.
fn char_at(s: &str, i: usize) -> Option<char> {
    s.get(i..)?.chars().next()
}

/// wildmatch's outcomes: the two aborts cut the search short and both mean "no match" in the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wild {
    Match,
    NoMatch,
    AbortAll,
    AbortToStarStar,
}

/// git's `wildmatch(pattern, text, WM_PATHNAME)`, case-sensitive, on characters.
fn wildmatch(pattern: &str, text: &str) -> bool {
    let mut budget = MATCH_BUDGET;
    dowild(pattern, text, &mut budget) == Wild::Match
}

/// A port of git's `dowild` (`wildmatch.c`) with `WM_PATHNAME`. `pattern` is where this call starts: as in git, a
/// `**` at its very start counts as following a `/`.
fn dowild(pattern: &str, text: &str, budget: &mut u32) -> Wild {
    if *budget == 0 {
        return Wild::AbortAll;
    }
    *budget -= 1;
    let pb = pattern.as_bytes();
    let mut p = 0;
    let mut t = 0;
    while let Some(p_ch) = char_at(pattern, p) {
        let t_ch = char_at(text, t);
        if p_ch == '*' {
            let star = p;
            p += 1;
            let mut match_slash = false;
            if pb.get(p) == Some(&b'*') {
                while pb.get(p) == Some(&b'*') {
                    p += 1;
                }
                let at_component_start = star == 0 || pb[star - 1] == b'/';
                let next = pb.get(p).copied();
                let slash_follows =
                    next == Some(b'/') || (next == Some(b'\\') && pb.get(p + 1) == Some(&b'/'));
                if at_component_start && (next.is_none() || slash_follows) {
                    // `**/` may match no directory at all: try the rest right here first.
                    if next == Some(b'/')
                        && dowild(&pattern[p + 1..], &text[t..], budget) == Wild::Match
                    {
                        return Wild::Match;
                    }
                    match_slash = true;
                }
            }
            if p == pb.len() {
                // A trailing `**` matches everything; a trailing `*` only up to the next `/`.
                return if !match_slash && text[t..].contains('/') {
                    Wild::NoMatch
                } else {
                    Wild::Match
                };
            }
            if !match_slash && pb[p] == b'/' {
                // `*/` matches the rest of this component and its slash.
                let Some(offset) = text[t..].find('/') else {
                    return Wild::NoMatch;
                };
                t += offset + 1;
                p += 1;
                continue;
            }
            let Some(next_ch) = char_at(pattern, p) else {
                return Wild::AbortAll;
            };
            while t < text.len() {
                if !next_ch.is_ascii() || !is_glob_special(next_ch as u8) {
                    // Skip straight to the next occurrence of the literal that follows the star.
                    let stop = text[t..]
                        .char_indices()
                        .find(|&(_, c)| c == next_ch || (!match_slash && c == '/'));
                    match stop {
                        Some((offset, c)) if c == next_ch => t += offset,
                        _ => return Wild::NoMatch,
                    }
                }
                let Some(here) = char_at(text, t) else {
                    break;
                };
                match dowild(&pattern[p..], &text[t..], budget) {
                    Wild::NoMatch => {
                        if !match_slash && here == '/' {
                            return Wild::AbortToStarStar;
                        }
                    }
                    Wild::AbortToStarStar if match_slash => {}
                    other => return other,
                }
                t += here.len_utf8();
            }
            return Wild::AbortAll;
        }
        let Some(t_ch) = t_ch else {
            return Wild::AbortAll;
        };
        match p_ch {
            '\\' => {
                let Some(literal) = char_at(pattern, p + 1) else {
                    return Wild::NoMatch;
                };
                if t_ch != literal {
                    return Wild::NoMatch;
                }
                p += 1 + literal.len_utf8();
            }
            '?' => {
                if t_ch == '/' {
                    return Wild::NoMatch;
                }
                p += 1;
            }
            '[' => match bracket(pattern, p, t_ch) {
                Ok((true, close)) => p = close + 1,
                Ok((false, _)) => return Wild::NoMatch,
                Err(_) => return Wild::AbortAll,
            },
            literal => {
                if t_ch != literal {
                    return Wild::NoMatch;
                }
                p += literal.len_utf8();
            }
        }
        t += t_ch.len_utf8();
    }
    if t < text.len() {
        Wild::NoMatch
    } else {
        Wild::Match
    }
}

/// The `[...]` starting at byte `open` of `pattern`, against `t_ch`: whether it matches, and the byte index of
/// its closing `]`. Errors are what makes wildmatch abort (so the pattern can never match).
fn bracket(pattern: &str, open: usize, t_ch: char) -> Result<(bool, usize), &'static str> {
    const UNCLOSED: &str =
        "`[` is never closed by `]` (write `\\[` for a literal `[`), so it matches nothing";
    let pb = pattern.as_bytes();
    let mut p = open + 1;
    let mut p_ch = char_at(pattern, p).ok_or(UNCLOSED)?;
    let negated = p_ch == '!' || p_ch == '^';
    if negated {
        p += 1;
        p_ch = char_at(pattern, p).ok_or(UNCLOSED)?;
    }
    let mut prev_ch: Option<char> = None;
    let mut matched = false;
    loop {
        // What the next `-` takes as the low end of a range: none after a range or a `[:class:]`.
        let this_ch;
        if p_ch == '\\' {
            p += 1;
            let escaped = char_at(pattern, p).ok_or(UNCLOSED)?;
            matched |= t_ch == escaped;
            this_ch = Some(escaped);
        } else if p_ch == '-'
            && let Some(low) = prev_ch
            && let Some(high_start) = char_at(pattern, p + 1)
            && high_start != ']'
        {
            p += 1;
            let mut high = high_start;
            if high == '\\' {
                p += 1;
                high = char_at(pattern, p).ok_or(UNCLOSED)?;
            }
            matched |= low <= t_ch && t_ch <= high;
            this_ch = None;
        } else if p_ch == '[' && pb.get(p + 1) == Some(&b':') {
            let name_start = p + 2;
            let close = name_start + pattern[name_start..].find(']').ok_or(UNCLOSED)?;
            if close == name_start || pb[close - 1] != b':' {
                // Not `[:name:]`: a plain `[` in the set, and go on from the `:`.
                matched |= t_ch == '[';
                this_ch = Some('[');
            } else {
                let c = t_ch;
                let in_class = match &pattern[name_start..close - 1] {
                    "alnum" => c.is_ascii_alphanumeric(),
                    "alpha" => c.is_ascii_alphabetic(),
                    "blank" => c == ' ' || c == '\t',
                    "cntrl" => c.is_ascii_control(),
                    "digit" => c.is_ascii_digit(),
                    "graph" => c.is_ascii_graphic(),
                    "lower" => c.is_ascii_lowercase(),
                    "print" => c.is_ascii_graphic() || c == ' ',
                    "punct" => c.is_ascii_punctuation(),
                    // git's own ctype: no vertical tab, no form feed.
                    "space" => matches!(c, ' ' | '\t' | '\n' | '\r'),
                    "upper" => c.is_ascii_uppercase(),
                    "xdigit" => c.is_ascii_hexdigit(),
                    _ => {
                        return Err(
                            "unknown `[:class:]` (alnum alpha blank cntrl digit graph lower print punct space upper xdigit), so it matches nothing",
                        );
                    }
                };
                matched |= in_class;
                p = close;
                this_ch = None;
            }
        } else {
            matched |= t_ch == p_ch;
            this_ch = Some(p_ch);
        }
        prev_ch = this_ch;
        p += char_at(pattern, p).map_or(1, char::len_utf8);
        p_ch = char_at(pattern, p).ok_or(UNCLOSED)?;
        if p_ch == ']' {
            break;
        }
    }
    Ok((matched != negated && t_ch != '/', p))
}

#[cfg(test)]
mod tests {
    use super::HubIgnore;

    fn rules(text: &str) -> HubIgnore {
        let (rules, warnings) = HubIgnore::parse(text);
        assert!(warnings.is_empty(), "{text:?}: {warnings:?}");
        rules
    }

    #[track_caller]
    fn check(text: &str, ignored: &[&str], kept: &[&str]) {
        let rules = rules(text);
        for path in ignored {
            assert!(rules.is_ignored(path), "{text:?} should leave out {path:?}");
        }
        for path in kept {
            assert!(!rules.is_ignored(path), "{text:?} should keep {path:?}");
        }
    }

    #[test]
    fn empty_rule_sets_ignore_nothing() {
        for rules in [
            HubIgnore::none(),
            HubIgnore::default(),
            rules(""),
            rules("\n\n# only comments\n   \n"),
        ] {
            assert!(rules.is_empty());
            assert!(!rules.is_ignored("a.json"));
            assert!(!rules.is_ignored("models/a.hck.json"));
        }
        assert!(!rules("x").is_empty());
    }

    #[test]
    fn blank_lines_and_comments() {
        check(
            "# models/\n\n*.tmp\n",
            &["a.tmp"],
            &["models/a.json", "# models/"],
        );
        check(
            "  # not a comment",
            &["  # not a comment"],
            &["# not a comment"],
        );
    }

    #[test]
    fn escaped_hash_and_bang() {
        check(
            "\\#notes.md",
            &["#notes.md", "x/#notes.md"],
            &["notes.md", "\\#notes.md"],
        );
        check(
            "\\!important.json",
            &["!important.json"],
            &["important.json"],
        );
        // A real `!` with nothing before it to undo leaves everything in.
        check(
            "!important.json",
            &[],
            &["important.json", "!important.json"],
        );
    }

    #[test]
    fn trailing_spaces() {
        check("draft.json   ", &["draft.json"], &["draft.json "]);
        check("draft.json\\ ", &["draft.json "], &["draft.json"]);
        check(
            "draft.json\\  ",
            &["draft.json "],
            &["draft.json", "draft.json  "],
        );
        check("a b.json", &["a b.json"], &["ab.json"]);
        // Only spaces are trimmed, not tabs.
        check("draft.json\t", &["draft.json\t"], &["draft.json"]);
    }

    #[test]
    fn negation_reincludes() {
        check(
            "*.json\n!keep.json",
            &["a.json", "x/b.json"],
            &["keep.json", "x/keep.json"],
        );
        // The last matching pattern decides.
        check("!keep.json\n*.json", &["keep.json"], &[]);
        check("*.json\n!*.json\n*.json", &["a.json"], &[]);
    }

    #[test]
    fn no_reinclude_below_an_excluded_directory() {
        check(
            "models/\n!models/a.json",
            &["models/a.json", "models/b.json"],
            &["a.json"],
        );
        check("models\n!models/a.json", &["models/a.json"], &[]);
        // Leaving out the contents (not the directory) lets files come back.
        check(
            "models/*\n!models/a.json",
            &["models/b.json", "models/sub/a.json"],
            &["models/a.json"],
        );
        // Re-including the directory itself works.
        check(
            "models/\n!models/",
            &[],
            &["models/a.json", "models/sub/a.json"],
        );
        // The classic allow-list.
        check(
            "/*\n!/Cassandra/\n/Cassandra/*\n!/Cassandra/keep/",
            &["README.md", "Other/a.json", "Cassandra/a.json"],
            &["Cassandra/keep/a.json", "Cassandra/keep/deep/b.json"],
        );
    }

    #[test]
    fn trailing_slash_matches_directories_only() {
        check(
            "models/",
            &[
                "models/a.json",
                "models/sub/b.json",
                "x/models/c.json",
                "models/",
            ],
            &["models", "x/models", "models.json"],
        );
        check("/models/", &["models/a.json"], &["x/models/a.json"]);
    }

    #[test]
    fn anchoring() {
        check(
            "foo",
            &["foo", "a/foo", "a/b/foo", "foo/x"],
            &["foo.json", "afoo"],
        );
        check("/foo", &["foo", "foo/x"], &["a/foo"]);
        check("a/foo", &["a/foo", "a/foo/x"], &["b/a/foo", "foo"]);
        check("a/*.json", &["a/x.json"], &["b/a/x.json", "a/b/x.json"]);
        check("*/foo", &["a/foo"], &["foo", "a/b/foo"]);
        // Only one leading slash is an anchor.
        check("//foo", &[], &["foo", "a/foo"]);
        check("foo//", &[], &["foo/a", "a/foo/b"]);
    }

    #[test]
    fn star_and_question_mark_stay_in_one_component() {
        check("a*", &["a", "abc", "x/ab"], &["ba"]);
        check("a/*", &["a/b", "a/b/c"], &["a"]);
        check("/a*c", &["ac", "abc"], &["ab/c"]);
        check("a?c", &["abc", "x/a-c"], &["ac", "abbc"]);
        check("/a?c", &[], &["a/c"]);
    }

    #[test]
    fn character_classes() {
        check("[ab].json", &["a.json", "b.json"], &["c.json", "ab.json"]);
        check("[!ab].json", &["c.json"], &["a.json"]);
        check("[^ab].json", &["c.json"], &["a.json"]);
        check("v[0-9].json", &["v1.json"], &["va.json", "v10.json"]);
        check("[]]x", &["]x"], &["x"]);
        check("[a-]x", &["ax", "-x"], &["bx"]);
        check("[[:upper:]]*", &["Alpha"], &["alpha"]);
        check("[[:digit:][:punct:]]x", &["1x", "&x"], &["ax"]);
        check("x[\\]]", &["x]"], &["x\\"]);
        check("br\\[a\\]ck", &["br[a]ck"], &["brack"]);
        // A class never matches `/`.
        check("/a[/]b", &[], &["a/b"]);
    }

    #[test]
    fn double_star() {
        check("**/foo", &["foo", "a/foo", "a/b/foo"], &["foo.json"]);
        check("**/foo/bar", &["foo/bar", "a/foo/bar"], &["foo/x/bar"]);
        check("abc/**", &["abc/x", "abc/x/y"], &["abc", "x/abc/y"]);
        check("a/**/b", &["a/b", "a/x/b", "a/x/y/b"], &["a/xb", "x/a/b"]);
        // Elsewhere `**` is a plain `*`.
        check("a**b", &["ab", "axxb"], &["a/b", "ax/yb"]);
        // …except right after the literal start of an anchored pattern, where git treats it as `**`.
        check("/a/b**", &["a/bc", "a/b/c/d.x"], &["a/x"]);
        check("a**/b", &["ab", "a/b", "ax/b", "ax/y/b"], &["x/ab"]);
        check("**", &["a", "a/b"], &[]);
    }

    #[test]
    fn model_like_paths() {
        let path = "Cassandra/Figure 017 & 030 - Map.hck.json";
        check(
            "Figure 017 & 030 - Map.hck.json",
            &[path],
            &["Cassandra/Figure 017.hck.json"],
        );
        check(
            "Cassandra/Figure*",
            &[path],
            &["x/Cassandra/Figure.hck.json"],
        );
        check("*&*", &[path], &["Cassandra/Figure.hck.json"]);
        check("* - Map.hck.json", &[path], &[]);
        check("Cassandra/", &[path], &["Cassandra.hck.json"]);
        check("/*/Figure ??? & ???*", &[path], &[]);
        check("*.hck.json\n!Cassandra/*", &["Other/a.hck.json"], &[path]);
    }

    #[test]
    fn crlf_and_bom() {
        let text = "\u{feff}*.tmp\r\n# comment\r\n\r\nmodels/\r\n!keep.tmp\r\n";
        check(
            text,
            &["a.tmp", "models/a.json"],
            &["keep.tmp", "a.json", "models"],
        );
        // Without a final newline, and a `\r` that is not before `\n` stays.
        check("a\r\nb\r", &["a", "b"], &["b\r"]);
        check("a\rb", &["a\rb"], &["a", "b"]);
        // The BOM only counts at the very start.
        check("x\n\u{feff}y", &["\u{feff}y"], &["y"]);
    }

    #[test]
    fn directory_queries() {
        let rules = rules("build/\n/docs/*\n!docs/keep/");
        assert!(rules.is_ignored("build/"));
        assert!(rules.is_ignored("x/build/"));
        assert!(!rules.is_ignored("build"));
        assert!(rules.is_ignored("docs/old/"));
        assert!(!rules.is_ignored("docs/keep/"));
        assert!(!rules.is_ignored("docs/"));
    }

    #[test]
    fn invalid_lines_are_skipped_with_warnings() {
        let (rules, warnings) =
            HubIgnore::parse("good\n[unclosed\nbad\\\n[[:nope:]]x\n!\n/\n*.json\n![\n");
        assert_eq!(warnings.len(), 6, "{warnings:#?}");
        assert!(warnings[0].contains("line 2"), "{warnings:?}");
        assert!(warnings[1].contains("line 3"), "{warnings:?}");
        assert!(rules.is_ignored("good"));
        assert!(rules.is_ignored("a.json"));
        assert!(!rules.is_ignored("[unclosed"));
        assert!(!rules.is_ignored("bad\\"));
        assert!(!rules.is_ignored("bad"));
    }

    #[test]
    fn odd_paths_do_not_panic() {
        let (rules, _) = HubIgnore::parse("*\n!a/\n**/b/**\n[é-ü]x\n");
        for path in [
            "",
            "/",
            "//",
            "a//b",
            "/a",
            "a/",
            "é/ü",
            "\u{0}",
            "a/\u{0}/b",
        ] {
            let _ = rules.is_ignored(path);
        }
        assert!(!rules.is_ignored(""));
    }

    #[test]
    fn non_ascii_matches_by_character() {
        check("caf?.json", &["café.json"], &["caf.json"]);
        check("[é-ü]x", &["éx", "üx"], &["ex"]);
        check("模型/", &["模型/a.json"], &["模型"]);
    }

    #[test]
    fn pathological_patterns_terminate() {
        let many = "**/".repeat(40) + "x";
        let (rules, warnings) = HubIgnore::parse(&many);
        assert!(warnings.is_empty());
        let path = "a/".repeat(30) + "y";
        let started = std::time::Instant::now();
        assert!(!rules.is_ignored(&path));
        assert!(rules.is_ignored("a/b/x"));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        let (rules, warnings) = HubIgnore::parse(&"*a".repeat(100_000));
        assert_eq!(warnings.len(), 1);
        assert!(rules.is_empty());
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic generator: no dependency needed.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet: Vec<char> = "ab/*?[]!^-\\:# \r\n\t\u{feff}é\u{0}.".chars().collect();
        for _ in 0..2_000 {
            let len = (next() % 40) as usize;
            let text: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let (rules, _) = HubIgnore::parse(&text);
            for _ in 0..5 {
                let len = (next() % 12) as usize;
                let path: String = (0..len)
                    .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                    .collect();
                let _ = rules.is_ignored(&path);
            }
        }
    }

    /// The same answers as `git check-ignore --no-index` for a table of patterns and paths.
    #[test]
    fn agrees_with_git_check_ignore() {
        let git = git::Checker::new().expect(
            "git is needed to compare with `git check-ignore` (scripts/test.sh installs it)",
        );
        let files = [
            "README.md",
            "model.hck.json",
            "Cassandra/Figure 017 & 030 - Map.hck.json",
            "Cassandra/old/v1.hck.json",
            "models/a.json",
            "models/sub/b.hck.json",
            "src/models/c.json",
            "src/models.json",
            "docs/models",
            "a/b/c/d.txt",
            "a/x/b/d.txt",
            "a/b.txt",
            "b/a.txt",
            "foo",
            "foo.bak",
            "x/foo",
            "x/y/foo.txt",
            "#hash.txt",
            "!bang.txt",
            "trailing ",
            "sp ace/file name.json",
            "build/output/x.o",
            "lib/build/y.o",
            "deep/a/b/c/e/f/g.hck.json",
            "q/star*.json",
            "q/what?.json",
            "br[a]ck.json",
            "Figure.HCK.JSON",
            "logs/2024/app.log",
            "logs/debug.log",
            ".hidden/x.json",
            "x/.hidden",
            "ax/y/b",
            "back\\slash.json",
        ];
        let patterns = [
            "foo",
            "/foo",
            "foo/",
            "models/",
            "/models/",
            "models",
            "src/models/",
            "src/models",
            "*.json",
            "*.hck.json",
            "/*.json",
            "Cassandra/",
            "Cassandra/*",
            "Cassandra/**",
            "**/old",
            "**/old/*.json",
            "a/**/d.txt",
            "a/*/d.txt",
            "a/**",
            "a/*",
            "a/b",
            "b",
            "**/b",
            "a/**/b",
            "a/**b",
            "a**/b",
            "**",
            "*",
            "*/",
            "?oo",
            "f?o*",
            "[ab]/*.txt",
            "[!a]/*.txt",
            "[^a]*",
            "br\\[a\\]ck.json",
            "br[[]a]ck.json",
            "[[:upper:]]*",
            "[[:lower:][:digit:]]*",
            "\\#hash.txt",
            "#hash.txt",
            "\\!bang.txt",
            "!bang.txt",
            "trailing\\ ",
            "trailing ",
            "*.json\n!model.hck.json",
            "*.hck.json\n!model.hck.json",
            "models/\n!models/a.json",
            "models/*\n!models/a.json",
            "/*\n!/Cassandra/\n/Cassandra/*\n!/Cassandra/old/",
            "*.log\n!logs/debug.log",
            "logs/\n!logs/",
            "deep/**/g.hck.json",
            "**/*.hck.json\n!Cassandra/**",
            "Figure 017 & 030 - Map.hck.json",
            "Cassandra/Figure 017 & 030 - Map.hck.json",
            "*&*",
            "*.HCK.JSON",
            ".*",
            "build/\n!lib/build/",
            "q/star\\*.json",
            "q/what\\?.json",
            "q/what?.json",
            "x/",
            "/x/y/",
            "a/b/",
            "**/b/**",
            "a/**/**/d.txt",
            "foo//",
            "//foo",
            "*/foo",
            "**/x/**/foo*",
            "[a-c]/*",
            "[]]*",
            "*[!]]",
            "[",
            "foo\\",
            "[[:foo:]]",
            "back\\\\slash.json",
            "back\\slash.json",
            "sp ace/",
            "sp\\ ace/*",
            "/a/b**",
            "a/**/",
            "**/",
            "\u{feff}foo\r\n*.log\r\n\r\n!debug.log\r\n",
            "\u{feff}#x\nfoo  \n",
            "*.txt\r\n!a/\r\n",
        ];
        let mut dirs: Vec<String> = Vec::new();
        for file in files {
            let mut end = 0;
            while let Some(slash) = file[end..].find('/') {
                end += slash;
                let dir = format!("{}/", &file[..end]);
                if !dirs.contains(&dir) {
                    dirs.push(dir);
                }
                end += 1;
            }
        }
        git.create(&files);
        let queries: Vec<&str> = files
            .iter()
            .copied()
            .chain(dirs.iter().map(String::as_str))
            .collect();
        let mut disagreements = Vec::new();
        for text in patterns {
            let (rules, _) = HubIgnore::parse(text);
            let answers = git.check(text, &queries);
            for (query, git_ignored) in queries.iter().zip(answers) {
                if rules.is_ignored(query) != git_ignored {
                    disagreements.push(format!(
                        "{text:?} / {query:?}: git says ignored={git_ignored}"
                    ));
                }
            }
        }
        assert!(
            disagreements.is_empty(),
            "{} disagreements with git:\n{}",
            disagreements.len(),
            disagreements.join("\n")
        );
    }

    /// The POSIX classes, character by character, against git.
    #[test]
    fn posix_classes_agree_with_git() {
        let git = git::Checker::new().expect(
            "git is needed to compare with `git check-ignore` (scripts/test.sh installs it)",
        );
        let names: Vec<String> = (1u8..128)
            .filter(|&b| b != b'/')
            .map(|b| format!("c{}", b as char))
            .collect();
        let queries: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut disagreements = Vec::new();
        for class in [
            "alnum", "alpha", "blank", "cntrl", "digit", "graph", "lower", "print", "punct",
            "space", "upper", "xdigit",
        ] {
            let text = format!("c[[:{class}:]]");
            let (rules, warnings) = HubIgnore::parse(&text);
            assert!(warnings.is_empty());
            for (query, git_ignored) in queries.iter().zip(git.check(&text, &queries)) {
                if rules.is_ignored(query) != git_ignored {
                    disagreements.push(format!("{class} / {query:?}: git says {git_ignored}"));
                }
            }
        }
        assert!(disagreements.is_empty(), "{disagreements:#?}");
    }

    /// Running `git check-ignore --no-index` in a scratch repository.
    pub(super) mod git {
        use std::io::Write as _;
        use std::path::PathBuf;
        use std::process::{Command, Stdio};

        pub(crate) struct Checker {
            root: PathBuf,
        }

        impl Drop for Checker {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.root);
            }
        }

        impl Checker {
            /// A fresh repository, or `None` when there is no `git` to run.
            pub(crate) fn new() -> Option<Checker> {
                static COUNTER: std::sync::atomic::AtomicUsize =
                    std::sync::atomic::AtomicUsize::new(0);
                let root = std::env::temp_dir().join(format!(
                    "hubignore-git-{}-{}",
                    std::process::id(),
                    COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                ));
                std::fs::create_dir_all(&root).expect("create a scratch directory");
                let checker = Checker { root };
                let status = checker.git().args(["init", "-q", "--template="]).status();
                match status {
                    Ok(status) if status.success() => Some(checker),
                    Ok(status) => panic!("git init failed: {status}"),
                    Err(_) => None,
                }
            }

            fn git(&self) -> Command {
                let mut command = Command::new("git");
                command
                    .current_dir(&self.root)
                    .env("GIT_CONFIG_NOSYSTEM", "1")
                    .env("GIT_CONFIG_GLOBAL", "/dev/null")
                    .env("HOME", &self.root)
                    .env("XDG_CONFIG_HOME", &self.root)
                    .env_remove("GIT_DIR")
                    .env_remove("GIT_WORK_TREE")
                    .env_remove("GIT_INDEX_FILE")
                    .args(["-c", "core.ignorecase=false"]);
                command
            }

            /// Create these files (and so their directories).
            pub(crate) fn create(&self, files: &[&str]) {
                for file in files {
                    let path = self.root.join(file);
                    std::fs::create_dir_all(path.parent().expect("a parent"))
                        .expect("create directories");
                    std::fs::write(&path, b"{}").expect("create a file");
                }
            }

            /// For each path, whether git leaves it out under a `.gitignore` holding `text`.
            pub(crate) fn check(&self, text: &str, paths: &[&str]) -> Vec<bool> {
                std::fs::write(self.root.join(".gitignore"), text).expect("write .gitignore");
                let mut child = self
                    .git()
                    .args(["check-ignore", "--no-index", "-v", "-n", "-z", "--stdin"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .expect("run git check-ignore");
                let mut input = Vec::new();
                for path in paths {
                    // git takes a directory as itself without a trailing slash.
                    input.extend_from_slice(path.trim_end_matches('/').as_bytes());
                    input.push(0);
                }
                let mut stdin = child.stdin.take().expect("stdin");
                let writer = std::thread::spawn(move || stdin.write_all(&input));
                let output = child.wait_with_output().expect("git check-ignore output");
                writer.join().expect("writer").expect("write paths");
                assert!(
                    output.status.code().is_some_and(|code| code <= 1),
                    "git check-ignore failed on {text:?}: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                // Records of four NUL-terminated fields: source, line, pattern, path.
                let fields: Vec<&[u8]> = output.stdout.split(|&b| b == 0).collect();
                let answers: Vec<bool> = fields
                    .chunks(4)
                    .filter(|record| record.len() == 4)
                    .map(|record| !record[2].is_empty() && !record[2].starts_with(b"!"))
                    .collect();
                assert_eq!(
                    answers.len(),
                    paths.len(),
                    "git check-ignore output for {text:?}"
                );
                answers
            }
        }
    }
}
