//! Small helpers for database URLs: split one, swap its database, read its port, hide its
//! password in messages, and percent-encode a file path for a `sqlite://` URL.

/// Percent-encodes the characters of a file path that would end it early in a URL.
pub(crate) fn url_encode_path(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            ' ' => out.push_str("%20"),
            c => out.push(c),
        }
    }
    out
}

/// Splits `scheme://authority/path?query` into (`scheme://authority`, `?query` or "").
pub(crate) fn split_url(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let authority_end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    let query_start = url[authority_end..]
        .find('?')
        .map_or(url.len(), |i| authority_end + i);
    (&url[..authority_end], &url[query_start..])
}

/// `url` with its database (path) replaced by `database`, keeping the query string.
pub(crate) fn with_database(url: &str, database: &str) -> String {
    let (base, query) = split_url(url);
    format!("{base}/{database}{query}")
}

/// The port of a `postgres://` URL, if it names one.
pub(crate) fn url_port(url: &str) -> Option<u16> {
    let (base, _) = split_url(url);
    let authority = base.rsplit("://").next()?;
    let host_port = authority.rsplit('@').next()?;
    let (_, port) = host_port.rsplit_once(':')?;
    port.parse().ok()
}

/// `url` with any password replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    let (base, _) = split_url(url);
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let authority = &base[after_scheme..];
    if let Some(at) = authority.rfind('@')
        && let Some(colon) = authority[..at].find(':')
    {
        let start = after_scheme + colon + 1;
        let end = after_scheme + at;
        return format!("{}***{}", &url[..start], &url[end..]);
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_helpers() {
        assert_eq!(
            with_database("postgres://u:p@h:5433/db?sslmode=disable", "test_1"),
            "postgres://u:p@h:5433/test_1?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
        assert_eq!(with_database("postgres://h?a=b", "x"), "postgres://h/x?a=b");
        assert_eq!(url_port("postgres://u:p@h:5433/db"), Some(5433));
        assert_eq!(url_port("postgres://u@h/db"), None);
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(url_encode_path("/tmp/a b?#%.db"), "/tmp/a%20b%3F%23%25.db");
    }
}
