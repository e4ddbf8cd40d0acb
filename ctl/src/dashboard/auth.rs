//! Who may use the dashboard's TCP port: the random token (in the query of the first visit, then
//! in a cookie), a Host header naming this machine (against DNS rebinding) and, for requests that
//! change state, a same-origin check (against cross-site requests riding on the cookie).

use hyper::header::{HeaderMap, COOKIE, HOST, ORIGIN};

/// The secret of one dashboard process: 32 random bytes as hex.
#[derive(Clone)]
pub struct Token(String);

impl Token {
    pub fn random() -> Result<Token, getrandom::Error> {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes)?;
        Ok(Token(bytes.iter().map(|b| format!("{b:02x}")).collect()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Compares without stopping at the first differing byte, so response times do not tell
    /// how much of a guess was right.
    fn matches(&self, given: &str) -> bool {
        given.len() == self.0.len() && given.bytes().zip(self.0.bytes()).fold(0, |acc, (a, b)| acc | (a ^ b)) == 0
    }
}

/// What the checks decided about one request.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The token came in the query: the page sets the cookie and drops it from the address.
    AllowedByQuery,
    Allowed,
    /// No valid token: 401.
    NoToken,
    /// The Host header names another machine (a DNS-rebinding page): 403.
    ForeignHost,
    /// A state-changing request from another origin (or none said): 403.
    CrossOrigin,
}

/// The checks every request goes through; `changes_state` adds the same-origin check.
pub struct Gate {
    pub token: Token,
    pub port: u16,
}

impl Gate {
    /// The cookie holding the token. Cookies are not kept apart by port, so the port is in the
    /// name: two dashboards on one machine do not overwrite each other's.
    pub fn cookie_name(&self) -> String {
        format!("sticler_token_{}", self.port)
    }

    pub fn check(&self, headers: &HeaderMap, query: Option<&str>, changes_state: bool) -> Verdict {
        let host = headers.get(HOST).and_then(|h| h.to_str().ok()).unwrap_or("");
        if !self.local_authority(host) {
            return Verdict::ForeignHost;
        }
        let from_query = query_param(query.unwrap_or(""), "token").is_some_and(|t| self.token.matches(&t));
        let from_cookie = self.cookie_token(headers).is_some_and(|t| self.token.matches(t));
        if !from_query && !from_cookie {
            return Verdict::NoToken;
        }
        if changes_state && !self.same_origin(headers) {
            return Verdict::CrossOrigin;
        }
        if from_query {
            Verdict::AllowedByQuery
        } else {
            Verdict::Allowed
        }
    }

    /// `127.0.0.1` or `localhost`, with this port or none.
    fn local_authority(&self, authority: &str) -> bool {
        let (host, port) = match authority.rsplit_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        };
        matches!(host, "127.0.0.1" | "localhost") && port.is_none_or(|p| p.parse() == Ok(self.port))
    }

    /// The Origin header must be this server; a browser sends it on every POST made by a page.
    fn same_origin(&self, headers: &HeaderMap) -> bool {
        let origin = headers.get(ORIGIN).and_then(|h| h.to_str().ok()).unwrap_or("");
        origin
            .strip_prefix("http://")
            .is_some_and(|authority| authority.contains(':') && self.local_authority(authority))
    }

    fn cookie_token<'a>(&self, headers: &'a HeaderMap) -> Option<&'a str> {
        let name = self.cookie_name();
        headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|h| h.to_str().ok())
            .flat_map(|h| h.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find_map(|(key, value)| (key == name).then_some(value))
    }
}

/// The value of `key` in a query string, percent-decoded.
pub fn query_param(query: &str, key: &str) -> Option<String> {
    query.split('&').filter_map(|pair| pair.split_once('=')).find(|(k, _)| *k == key).map(|(_, v)| percent_decode(v))
}

/// `%XX` and `+` decoded; a malformed escape is kept as written.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    fn gate() -> Gate {
        Gate { token: Token("abc123".into()), port: 8080 }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn the_token_comes_in_the_query_or_the_cookie_of_this_port() {
        let g = gate();
        let host = ("host", "127.0.0.1:8080");
        assert_eq!(g.check(&headers(&[host]), Some("token=abc123"), false), Verdict::AllowedByQuery);
        let cookie = ("cookie", "a=b; sticler_token_8080=abc123");
        assert_eq!(g.check(&headers(&[host, cookie]), None, false), Verdict::Allowed);
        assert_eq!(g.check(&headers(&[host]), None, false), Verdict::NoToken);
        assert_eq!(g.check(&headers(&[host]), Some("token=abc12"), false), Verdict::NoToken);
        assert_eq!(g.check(&headers(&[host, ("cookie", "sticler_token_9090=abc123")]), None, false), Verdict::NoToken);
    }

    #[test]
    fn only_local_host_names_with_this_port_pass() {
        let g = gate();
        for good in ["127.0.0.1:8080", "localhost:8080", "localhost", "127.0.0.1"] {
            assert_eq!(g.check(&headers(&[("host", good)]), Some("token=abc123"), false), Verdict::AllowedByQuery);
        }
        for bad in ["evil.example:8080", "127.0.0.1:8081", "localhost.evil.example", "", "127.0.0.2:8080"] {
            assert_eq!(g.check(&headers(&[("host", bad)]), Some("token=abc123"), false), Verdict::ForeignHost, "{bad}");
        }
    }

    #[test]
    fn state_changes_need_this_origin() {
        let g = gate();
        let base = [("host", "127.0.0.1:8080"), ("cookie", "sticler_token_8080=abc123")];
        let with = |origin: &'static str| {
            let mut h = headers(&base);
            h.append("origin", HeaderValue::from_static(origin));
            g.check(&h, None, true)
        };
        assert_eq!(with("http://127.0.0.1:8080"), Verdict::Allowed);
        assert_eq!(with("http://localhost:8080"), Verdict::Allowed);
        assert_eq!(with("http://evil.example"), Verdict::CrossOrigin);
        assert_eq!(with("null"), Verdict::CrossOrigin);
        assert_eq!(g.check(&headers(&base), None, true), Verdict::CrossOrigin);
    }

    #[test]
    fn query_values_are_percent_decoded() {
        assert_eq!(query_param("a=1&project=%2Ftmp%2Fmy+p&x", "project").as_deref(), Some("/tmp/my p"));
        assert_eq!(query_param("a=%zz", "a").as_deref(), Some("%zz"));
        assert_eq!(query_param("a=1", "b"), None);
    }
}
