//! Building HTML safely: every value from a model file or a client passes through [`esc`] (text and
//! attributes) or [`q`] (a query parameter in a link) before it reaches a page, and pages share one layout
//! (navigation, search box, breadcrumbs) and one stylesheet and script, both served from the binary.

use std::fmt::Write as _;

/// `text` safe inside an HTML element or a quoted attribute.
pub(super) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            // Control characters (but tab and newlines) have no place in a page.
            c if c.is_control() && !matches!(c, '\t' | '\n' | '\r') => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
    out
}

/// `value` as a query parameter value.
pub(super) fn q(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// A link to `path` with query parameters (empty values left out), escaped for an `href`.
pub(super) fn link(path: &str, params: &[(&str, &str)]) -> String {
    let mut url = path.to_string();
    let mut first = true;
    for (k, v) in params.iter().filter(|(_, v)| !v.is_empty()) {
        url.push(if first { '?' } else { '&' });
        first = false;
        let _ = write!(url, "{k}={}", q(v));
    }
    esc(&url)
}

/// An id for an HTML element named by `parts` (an entity's name; an entity and an attribute path), safe in
/// an `id` and in a URL fragment whatever the names hold.
pub(super) fn anchor(prefix: &str, parts: &[&str]) -> String {
    use base64::Engine as _;
    let joined = parts.join("\u{0}");
    format!(
        "{prefix}-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(joined.as_bytes())
    )
}

/// The first 12 characters of a commit id.
pub(super) fn short(commit: &str) -> &str {
    crate::query::short(commit)
}

/// A whole page: the layout around `body`, with `title` and the breadcrumbs (label and link; the last is the
/// page itself, unlinked). `search` is what the search box holds.
pub(super) fn page(title: &str, crumbs: &[(&str, String)], search: &str, body: &str) -> String {
    let mut html = String::with_capacity(body.len() + 2048);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{} · modelmirror</title>\n<link rel=\"icon\" href=\"data:,\">\n\
         <link rel=\"stylesheet\" href=\"/static/style.css?v={tag}\">\n\
         <script src=\"/static/app.js?v={tag}\" defer></script>\n</head>\n<body>\n\
         <header class=\"top\"><a class=\"brand\" href=\"/\">modelmirror</a>\
         <nav><a href=\"/\">Repositories</a><a href=\"/models\">Models</a><a href=\"/events\">Events</a></nav>\
         <form class=\"search\" action=\"/search\" method=\"get\" role=\"search\">\
         <input type=\"search\" name=\"q\" value=\"{}\" placeholder=\"Search models, entities, attributes\" aria-label=\"Search\">\
         <button type=\"submit\">Search</button></form></header>\n<main>\n",
        esc(title),
        esc(search),
        tag = super::asset_tag(),
    );
    if !crumbs.is_empty() {
        html.push_str("<nav class=\"crumbs\" aria-label=\"Breadcrumbs\">");
        for (i, (label, href)) in crumbs.iter().enumerate() {
            if i > 0 {
                html.push_str(" <span class=\"sep\">›</span> ");
            }
            if i + 1 == crumbs.len() || href.is_empty() {
                let _ = write!(html, "<span>{}</span>", esc(label));
            } else {
                let _ = write!(html, "<a href=\"{href}\">{}</a>", esc(label));
            }
        }
        html.push_str("</nav>\n");
    }
    html.push_str(body);
    html.push_str("\n</main>\n</body>\n</html>\n");
    html
}

/// The marks around matched words in the snippets the pages ask for: private-use characters, which model
/// text has no business holding (`[` and `]`, the command line's marks, are common in names like `List[Int]`).
pub(super) const MARKS: (&str, &str) = ("\u{E000}", "\u{E001}");

/// A search snippet with its [`MARKS`] turned into `<mark>`, everything else escaped.
pub(super) fn highlight(snippet: &str) -> String {
    let mut out = String::new();
    let mut open = false;
    for c in snippet.chars() {
        match c {
            '\u{E000}' if !open => {
                out.push_str("<mark>");
                open = true;
            }
            '\u{E001}' if open => {
                out.push_str("</mark>");
                open = false;
            }
            '\u{E000}' | '\u{E001}' => {}
            c => out.push_str(&esc(c.encode_utf8(&mut [0; 4]))),
        }
    }
    if open {
        out.push_str("</mark>");
    }
    out
}

/// What each entity of a model is called in anchors (`#e-…`, `#a-…`): its name, and for a second entity
/// of the same name (in another container) its name and place, so that every anchor is unique and a link by
/// name lands on the first.
pub(super) fn entity_keys(entities: &[crate::model::Entity]) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    entities
        .iter()
        .enumerate()
        .map(|(i, e)| match seen.insert(e.name.as_str()) {
            true => e.name.clone(),
            false => format!("{}\u{1}{i}", e.name),
        })
        .collect()
}

/// An optional value, or a dash.
pub(super) fn or_dash(v: Option<&str>) -> String {
    v.map_or_else(|| "–".to_string(), esc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_text_is_inert() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
        assert_eq!(esc("a\u{1b}[31mb"), "a\u{fffd}[31mb");
        assert_eq!(
            link(
                "/model",
                &[("repo", "g/r"), ("path", "a b/%&\"x.json"), ("commit", "")]
            ),
            "/model?repo=g%2Fr&amp;path=a+b%2F%25%26%22x.json"
        );
        assert_eq!(
            highlight("the \u{E000}<b>pet</b>\u{E001} name List[Int]"),
            "the <mark>&lt;b&gt;pet&lt;/b&gt;</mark> name List[Int]"
        );
        assert_eq!(highlight("\u{E001}x\u{E000}y"), "x<mark>y</mark>");
        let id = anchor("a", &["Pet", "owner.\"name\" <x>"]);
        assert!(
            id.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        );
    }
}
