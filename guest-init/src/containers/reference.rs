//! Image references (`[registry/]repository[:tag][@digest]`), parsed by hand.
//!
//! oci-spec's parser compiles one large Unicode regex on first use: about
//! 0.6 s of the guest's boot under TCG, before the first registry request.
//! This is the same grammar (distribution's reference grammar, as oci-spec
//! applies it, including Docker Hub's `docker.io` and `library/` defaults)
//! checked with plain string code; the tests compare both parsers.

use oci_spec::distribution::{ParseError, Reference};

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const NAME_MAX: usize = 255;

/// Parses an image reference as `oci_spec`'s `Reference::from_str` does.
pub(crate) fn parse(s: &str) -> Result<Reference, ParseError> {
    if s.is_empty() {
        return Err(ParseError::NameEmpty);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((rest, digest)) => {
            if !is_digest(digest) {
                return Err(ParseError::ReferenceInvalidFormat);
            }
            (rest, Some(digest))
        }
        None => (s, None),
    };
    // A tag follows the last ':' only when no '/' comes after it (a ':'
    // before a '/' is the registry's port).
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if let Some(tag) = tag
        && !is_tag(tag)
    {
        return Err(ParseError::ReferenceInvalidFormat);
    }
    // Valid as `registry/path` or as a path alone (whose first component
    // may still name a registry below, as oci-spec decides).
    let path_ok = |p: &str| !p.is_empty() && p.split('/').all(is_path_component);
    let valid = match name.split_once('/') {
        Some((first, rest)) if is_registry(first) && path_ok(rest) => true,
        _ => path_ok(name),
    };
    if !valid {
        return Err(ParseError::ReferenceInvalidFormat);
    }
    let (registry, path) = split_registry(name);
    let mut registry = registry.unwrap_or(DOCKER_HUB).to_owned();
    if registry == DOCKER_HUB_LEGACY {
        registry = DOCKER_HUB.to_owned();
    }
    let repository = if registry == DOCKER_HUB && !path.contains('/') {
        format!("library/{path}")
    } else {
        path.to_owned()
    };
    if repository.len() > NAME_MAX {
        return Err(ParseError::NameTooLong);
    }
    if let Some(digest) = digest {
        check_digest_length(digest)?;
    }
    let tag = tag.map(str::to_owned);
    Ok(match (tag, digest) {
        (Some(tag), Some(digest)) => {
            Reference::with_tag_and_digest(registry, repository, tag, digest.to_owned())
        }
        (None, Some(digest)) => Reference::with_digest(registry, repository, digest.to_owned()),
        (tag, None) => Reference::with_tag(registry, repository, tag.unwrap_or("latest".into())),
    })
}

/// The first component is a registry when it has a '.' or ':' or is
/// `localhost`, as Docker decides.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// `host[:port]`, host being dot-separated labels of letters, digits and
/// inner '-'.
fn is_registry(registry: &str) -> bool {
    let (host, port) = match registry.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    let label = |l: &str| {
        !l.is_empty()
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    host.split('.').all(label)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

/// `[a-z0-9]+` runs joined by one '.', one or two '_', or any number of '-'.
fn is_path_component(component: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let bytes = component.as_bytes();
    let (Some(&first), Some(&last)) = (bytes.first(), bytes.last()) else {
        return false;
    };
    if !alnum(first) || !alnum(last) {
        return false;
    }
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let sep = &component[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// `[\w][\w.-]{0,127}`.
fn is_tag(tag: &str) -> bool {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    let mut chars = tag.chars();
    chars.next().is_some_and(word)
        && tag.chars().count() <= 128
        && chars.all(|c| word(c) || c == '.' || c == '-')
}

/// `algorithm:hex` with at least 32 hex digits; the algorithm is letters
/// and digits in parts joined by `-`, `_`, `+` or `.`.
fn is_digest(digest: &str) -> bool {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return false;
    };
    let part = |p: &str| {
        p.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && p.chars().all(|c| c.is_ascii_alphanumeric())
    };
    algorithm.split(['-', '_', '+', '.']).all(part)
        && hex.len() >= 32
        && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

fn check_digest_length(digest: &str) -> Result<(), ParseError> {
    let (algorithm, hex) = digest
        .split_once(':')
        .ok_or(ParseError::DigestInvalidFormat)?;
    let want = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ParseError::DigestUnsupported),
    };
    if hex.len() == want {
        Ok(())
    } else {
        Err(ParseError::DigestInvalidLength)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn agrees_with_oci_spec_on_valid_and_invalid_references() {
        let long = format!("a/{}", "b".repeat(260));
        let long_tag = format!("busybox:{}", "t".repeat(129));
        let cases = [
            "busybox",
            "busybox:1.36",
            "library/busybox:latest",
            "docker.io/busybox",
            "index.docker.io/library/busybox",
            "ghcr.io/dstack-tee/dstack-kms:0.5",
            "127.0.0.1:5000/dstack-examples/hello:latest",
            "localhost/app",
            "localhost:5000/app:v1",
            "registry.example.com:443/a/b/c:1.0-rc_1",
            "a.b-c/x__y/z.w/q--r:tag",
            &format!("busybox@{SHA}"),
            &format!("busybox:1@{SHA}"),
            &format!("ghcr.io/x/y:1@{SHA}"),
            "busybox@sha256:abcd",
            "busybox@md5:0123456789abcdef0123456789abcdef",
            "busybox@sha256:zz23456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "",
            "Busybox",
            "busybox:",
            ":tag",
            "busybox:-x",
            "a//b",
            "a/b/",
            "/a",
            "a_.b",
            "a___b",
            "-a",
            "a-",
            "host:port/a",
            "ho_st.io/a",
            "-host.io/a",
            "host.io:/a",
            "a@",
            "a:b:c",
            "a:b/c",
            &long,
            &long_tag,
            "büsybox",
            "busybox:tä",
        ];
        for case in cases {
            let ours = parse(case);
            let theirs: Result<Reference, ParseError> = case.parse();
            match (&ours, &theirs) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{case:?}"),
                (Err(a), Err(b)) => assert_eq!(a, b, "{case:?}"),
                _ => panic!("{case:?}: ours {ours:?}, oci-spec {theirs:?}"),
            }
        }
    }

    #[test]
    fn docker_hub_defaults() {
        let r = parse("busybox").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("docker.io", "library/busybox", Some("latest"))
        );
        let r = parse("127.0.0.1:5000/x/hello:v2").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("127.0.0.1:5000", "x/hello", Some("v2"))
        );
    }
}
