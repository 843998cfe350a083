//! Registry token auth: the `WWW-Authenticate: Bearer realm=..,service=..`
//! challenge a registry answers with, and the token its realm hands out.
//! Only anonymous pull tokens: the guest has no registry credentials.

/// A bearer challenge: where to get a token, and for which service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Challenge {
    pub(super) realm: String,
    pub(super) service: Option<String>,
}

impl Challenge {
    /// Parses a `Bearer` challenge; `None` for other schemes (`Basic` needs
    /// credentials) or one without a realm.
    pub(super) fn parse(header: &str) -> Option<Self> {
        let header = header.trim_start();
        let (scheme, params) = header.split_once(' ').unwrap_or((header, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut realm = None;
        let mut service = None;
        for (key, value) in Params(params) {
            if key.eq_ignore_ascii_case("realm") {
                realm = Some(value);
            } else if key.eq_ignore_ascii_case("service") {
                service = Some(value);
            }
        }
        Some(Challenge {
            realm: realm.filter(|r| !r.is_empty())?,
            service,
        })
    }

    /// The realm's URL asking for a pull token on `repository`. The scope is
    /// ours, not the challenge's: we ask for pull and nothing more.
    pub(super) fn token_url(&self, repository: &str) -> String {
        let mut url = self.realm.clone();
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("scope=");
        url.push_str(&encode(&format!("repository:{repository}:pull")));
        if let Some(service) = &self.service {
            url.push_str("&service=");
            url.push_str(&encode(service));
        }
        url
    }
}

/// `key=value` or `key="quoted \" value"` pairs, comma separated (RFC 9110
/// auth-params).
struct Params<'a>(&'a str);

impl Iterator for Params<'_> {
    type Item = (String, String);

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.0.trim_start_matches([' ', '\t', ',']);
        let (key, rest) = rest.split_once('=')?;
        let rest = rest.trim_start();
        let mut value = String::new();
        let after = if let Some(quoted) = rest.strip_prefix('"') {
            let mut chars = quoted.char_indices();
            let mut end = quoted.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, escaped)) = chars.next() {
                            value.push(escaped);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => value.push(c),
                }
            }
            &quoted[end..]
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value.push_str(rest[..end].trim_end());
            &rest[end..]
        };
        self.0 = after;
        Some((key.trim().to_string(), value))
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The token in a realm's answer: `token`, or OAuth2's `access_token`
/// (registries send one or both; `token` wins).
pub(super) fn parse_token(body: &[u8]) -> Result<String, serde_json::Error> {
    #[derive(serde::Deserialize)]
    struct Answer {
        token: Option<String>,
        access_token: Option<String>,
    }
    let answer: Answer = serde_json::from_slice(body)?;
    answer
        .token
        .or(answer.access_token)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| serde::de::Error::custom("no token in the answer"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bearer_challenges() {
        let docker = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/nginx:pull""#;
        let challenge = Challenge::parse(docker).unwrap();
        assert_eq!(challenge.realm, "https://auth.docker.io/token");
        assert_eq!(challenge.service.as_deref(), Some("registry.docker.io"));
        assert_eq!(
            challenge.token_url("library/nginx"),
            "https://auth.docker.io/token?scope=repository%3Alibrary%2Fnginx%3Apull&service=registry.docker.io"
        );
        // Unquoted values, spaces after commas, escapes, a realm with a query.
        let odd = r#"bearer realm=https://r.example/t?x=1, service="a \"b\"""#;
        let challenge = Challenge::parse(odd).unwrap();
        assert_eq!(challenge.realm, "https://r.example/t?x=1");
        assert_eq!(challenge.service.as_deref(), Some("a \"b\""));
        assert!(
            challenge
                .token_url("r")
                .starts_with("https://r.example/t?x=1&scope=")
        );
        assert_eq!(Challenge::parse(r#"Basic realm="registry""#), None);
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse(""), None);
    }

    #[test]
    fn parses_token_answers() {
        assert_eq!(
            parse_token(br#"{"token":"a","access_token":"b"}"#).unwrap(),
            "a"
        );
        assert_eq!(
            parse_token(br#"{"access_token":"b","expires_in":300}"#).unwrap(),
            "b"
        );
        assert!(parse_token(br#"{"expires_in":300}"#).is_err());
        assert!(parse_token(br#"{"token":3}"#).is_err());
        assert!(parse_token(b"not json").is_err());
    }
}
