//! Text from outside made fit for messages: credentials in URLs masked before a URL or a library's error text
//! reaches a log line, an error, the database or the terminal.

/// A URL fit for messages: the user part of an http(s) URL (hosts accept a token as the user name) and any
/// password replaced by `***`. Other schemes (`ssh://git@host/…`) keep their user name, which is a login.
pub(crate) fn redact_url(u: &str) -> String {
    let Some((scheme, rest)) = u.split_once("://") else {
        return u.to_string();
    };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    format!("{scheme}://{}{path}", redact_authority(scheme, authority))
}

/// `user:password@host` of a URL of `scheme`, fit for messages.
fn redact_authority(scheme: &str, authority: &str) -> String {
    let Some((userinfo, host)) = authority.rsplit_once('@') else {
        return authority.to_string();
    };
    let web = ["http", "https"].iter().any(|s| {
        scheme
            .rsplit(|c: char| !c.is_ascii_alphanumeric())
            .next()
            .is_some_and(|t| t.eq_ignore_ascii_case(s))
    });
    if web {
        format!("***@{host}")
    } else if userinfo.contains(':') {
        format!("{}:***@{host}", userinfo.split(':').next().unwrap_or(""))
    } else {
        authority.to_string()
    }
}

/// Redact every URL's credentials found in a free text, as [`redact_url`] does (error messages from
/// libraries may quote a proxy URL).
pub(crate) fn redact_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The scheme: the letters just before `://`.
        let scheme = head[..head.len() - 3]
            .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .next()
            .unwrap_or("");
        let end = tail
            .find(|c: char| c.is_whitespace() || c == '/' || c == '"' || c == '\'' || c == '>')
            .unwrap_or(tail.len());
        out.push_str(&redact_authority(scheme, &tail[..end]));
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
        assert_eq!(redact_url("http://u:p@proxy:3128"), "http://***@proxy:3128");
        assert_eq!(redact_url("https://gitlab.com/a"), "https://gitlab.com/a");
        assert_eq!(
            redact_text("failed via http://bob:s3cret@proxy:3128/x and ssh://git@h/r"),
            "failed via http://***@proxy:3128/x and ssh://git@h/r"
        );
        assert_eq!(redact_url("ssh://git:pw@h/r"), "ssh://git:***@h/r");
    }

    #[test]
    fn a_token_as_the_user_name_is_masked_too() {
        assert_eq!(
            redact_url("http://url-SECRET-777@host/acme/b.git"),
            "http://***@host/acme/b.git"
        );
        assert_eq!(redact_url("HTTPS://tok@host"), "HTTPS://***@host");
        assert_eq!(
            redact_text("entry \"https://tok-123@h/x.git\": no"),
            "entry \"https://***@h/x.git\": no"
        );
        assert_eq!(redact_text("git+https://t@h/x"), "git+https://***@h/x");
    }
}
