//! Text from outside made fit for messages: credentials in URLs masked before a URL or a library's error text
//! reaches a log line, an error, the database or the terminal.

/// A URL fit for messages: any password in it replaced by `***`.
pub(crate) fn redact_url(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return u.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{path}")
        }
        _ => u.to_string(),
    }
}

/// Redact every `scheme://user:password@` found in a free text (error messages from libraries may quote a
/// proxy URL).
pub(crate) fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'' || c == '>')
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rsplit_once('@') {
            Some((userinfo, host)) if userinfo.contains(':') => {
                out.push_str(userinfo.split(':').next().unwrap_or(""));
                out.push_str(":***@");
                out.push_str(host);
            }
            _ => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("http://u:p@proxy:3128"),
            "http://u:***@proxy:3128"
        );
        assert_eq!(redact_url("https://gitlab.com/a"), "https://gitlab.com/a");
        assert_eq!(
            redact_text("failed via http://bob:s3cret@proxy:3128/x and ssh://git@h/r"),
            "failed via http://bob:***@proxy:3128/x and ssh://git@h/r"
        );
    }
}
