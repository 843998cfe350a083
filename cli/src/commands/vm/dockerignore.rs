//! `.dockerignore`, read as docker reads it (moby's patternmatcher): one
//! pattern a line, `#` comments, a leading `/` dropped, paths cleaned;
//! `*` and `?` match within one path component, `**` any number of them,
//! `[a-z]` a class, `\` escapes; a pattern also matches everything under a
//! directory it matches; `!` re-includes; the last pattern that matches a
//! path decides.

/// Why a `.dockerignore` cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {reason}")]
pub(crate) struct PatternError {
    /// 1-based line number.
    line: usize,
    /// What is wrong.
    reason: &'static str,
}

/// One piece of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// A character as it is.
    Literal(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any run of characters other than `/`.
    Star,
    /// `**/` (or `**` before more pattern): any run of whole components,
    /// possibly none.
    Dirs,
    /// A trailing `**`: anything at all.
    Rest,
    /// `[...]`: one character (not `/`) in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

/// A compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern {
    tokens: Vec<Token>,
    /// `!pattern`: re-includes what it matches.
    exception: bool,
}

/// The patterns of one `.dockerignore`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Dockerignore {
    patterns: Vec<Pattern>,
}

/// `path` with `.` components, repeated and trailing slashes removed and
/// `..` applied (Go's `filepath.Clean` on a slash path); `.` if empty.
fn clean(path: &str) -> String {
    let absolute = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.last().is_some_and(|p| *p != "..") {
                    parts.pop();
                } else if !absolute {
                    parts.push("..");
                }
            }
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (absolute, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".into(),
        (false, false) => joined,
    }
}

impl Dockerignore {
    /// Parses the text of a `.dockerignore`.
    pub(crate) fn parse(text: &str) -> Result<Self, PatternError> {
        let mut patterns = Vec::new();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (i, line) in text.lines().enumerate() {
            let error = |reason| PatternError {
                line: i + 1,
                reason,
            };
            if line.starts_with('#') {
                continue;
            }
            let mut pattern = line.trim();
            if pattern.is_empty() {
                continue;
            }
            let exception = pattern.starts_with('!');
            if exception {
                pattern = pattern[1..].trim();
                if pattern.is_empty() {
                    return Err(error("\"!\" must be followed by a pattern"));
                }
            }
            let mut cleaned = clean(pattern);
            if cleaned.len() > 1 && cleaned.starts_with('/') {
                cleaned.remove(0);
            }
            let tokens = compile(&cleaned).map_err(error)?;
            patterns.push(Pattern { tokens, exception });
        }
        Ok(Self { patterns })
    }

    /// Whether any pattern re-includes (`!`): then an excluded directory
    /// must still be walked, since something under it may be included.
    pub(crate) fn has_exceptions(&self) -> bool {
        self.patterns.iter().any(|p| p.exception)
    }

    /// Whether `path` (relative to the context, `/`-separated) is left out.
    pub(crate) fn excludes(&self, path: &str) -> bool {
        let path = clean(path);
        let parents: Vec<&str> = path.split('/').collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            // Only a pattern that could change the verdict is tried.
            if pattern.exception != excluded {
                continue;
            }
            let mut matched = matches(&pattern.tokens, &path);
            // A pattern that matches a parent directory matches what is in it.
            for end in 1..parents.len() {
                if matched {
                    break;
                }
                matched = matches(&pattern.tokens, &parents[..end].join("/"));
            }
            if matched {
                excluded = !pattern.exception;
            }
        }
        excluded
    }
}

/// Compiles a cleaned pattern.
fn compile(pattern: &str) -> Result<Vec<Token>, &'static str> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match c {
            '*' if chars.get(i) == Some(&'*') => {
                i += 1;
                if chars.get(i) == Some(&'/') {
                    i += 1;
                }
                tokens.push(if i == chars.len() {
                    Token::Rest
                } else {
                    Token::Dirs
                });
            }
            '*' => tokens.push(Token::Star),
            '?' => tokens.push(Token::One),
            '\\' => match chars.get(i) {
                Some(&next) => {
                    tokens.push(Token::Literal(next));
                    i += 1;
                }
                None => tokens.push(Token::Literal('\\')),
            },
            '[' => {
                let negated = chars.get(i) == Some(&'^');
                if negated {
                    i += 1;
                }
                let mut ranges = Vec::new();
                loop {
                    let mut lo = *chars.get(i).ok_or("a [ class is not closed")?;
                    i += 1;
                    if lo == ']' && !ranges.is_empty() {
                        break;
                    }
                    if lo == '\\' {
                        lo = *chars.get(i).ok_or("a [ class is not closed")?;
                        i += 1;
                    }
                    let mut hi = lo;
                    if chars.get(i) == Some(&'-') && chars.get(i + 1).is_some_and(|c| *c != ']') {
                        hi = chars[i + 1];
                        i += 2;
                        if hi == '\\' {
                            hi = *chars.get(i).ok_or("a [ class is not closed")?;
                            i += 1;
                        }
                        if hi < lo {
                            return Err("a [ class has a range that runs backwards");
                        }
                    }
                    ranges.push((lo, hi));
                }
                tokens.push(Token::Class { negated, ranges });
            }
            c => tokens.push(Token::Literal(c)),
        }
    }
    Ok(tokens)
}

/// Whether `tokens` match all of `text`.
fn matches(tokens: &[Token], text: &str) -> bool {
    let chars: Vec<char> = text.chars().collect();
    match_from(tokens, &chars)
}

fn match_from(tokens: &[Token], text: &[char]) -> bool {
    let Some((token, rest)) = tokens.split_first() else {
        return text.is_empty();
    };
    match token {
        Token::Literal(c) => text.first() == Some(c) && match_from(rest, &text[1..]),
        Token::One => text.first().is_some_and(|c| *c != '/') && match_from(rest, &text[1..]),
        Token::Class { negated, ranges } => {
            text.first().is_some_and(|c| {
                *c != '/' && ranges.iter().any(|(lo, hi)| lo <= c && c <= hi) != *negated
            }) && match_from(rest, &text[1..])
        }
        Token::Star => {
            // Any run of non-slash characters, shortest first.
            for n in 0..=text.len() {
                if match_from(rest, &text[n..]) {
                    return true;
                }
                if text.get(n) == Some(&'/') {
                    return false;
                }
            }
            false
        }
        // Nothing, or anything up to and including a `/`.
        Token::Dirs => {
            match_from(rest, text)
                || (0..text.len()).any(|n| text[n] == '/' && match_from(rest, &text[n + 1..]))
        }
        Token::Rest => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> Dockerignore {
        Dockerignore::parse(text).unwrap()
    }

    #[test]
    fn stars_stay_in_a_component_and_double_stars_cross_them() {
        let d = ignore("*.log\n");
        assert!(d.excludes("a.log"));
        assert!(!d.excludes("dir/a.log"), "* is one component");
        let d = ignore("**/*.log\n");
        assert!(d.excludes("a.log") && d.excludes("dir/sub/a.log"));
        assert!(!d.excludes("a.logx"));
        let d = ignore("docs/**\n");
        assert!(d.excludes("docs/a") && d.excludes("docs/a/b.md"));
        assert!(!d.excludes("docsx"));
        let d = ignore("a/**/z\n");
        assert!(d.excludes("a/z") && d.excludes("a/b/c/z"));
        assert!(!d.excludes("a/b/zz"));
        let d = ignore("?.txt\nfile[0-9].md\nx[^a-c]\n");
        assert!(d.excludes("a.txt") && !d.excludes("ab.txt"));
        assert!(d.excludes("file7.md") && !d.excludes("filex.md"));
        assert!(d.excludes("xd") && !d.excludes("xb"));
        let d = ignore("\\*literal\n");
        assert!(d.excludes("*literal") && !d.excludes("xliteral"));
    }

    #[test]
    fn a_matched_directory_takes_its_contents_and_the_last_match_decides() {
        let d = ignore("node_modules\n");
        assert!(d.excludes("node_modules"));
        assert!(d.excludes("node_modules/x/index.js"));
        assert!(
            !d.excludes("src/node_modules"),
            "patterns are anchored at the context"
        );
        let d = ignore("*.md\n!README.md\n");
        assert!(d.excludes("CHANGES.md"));
        assert!(!d.excludes("README.md"));
        let d = ignore("!README.md\n*.md\n");
        assert!(d.excludes("README.md"), "the last matching pattern wins");
        let d = ignore("build\n!build/keep\n");
        assert!(d.excludes("build/other"));
        assert!(!d.excludes("build/keep"));
        assert!(d.has_exceptions());
        assert!(!ignore("build\n").has_exceptions());
    }

    #[test]
    fn lines_are_cleaned_as_docker_cleans_them() {
        let d = ignore("# a comment\n\n  /secret.env  \n./tmp/\nlogs//old/../new\n\u{feff}x\n");
        assert!(d.excludes("secret.env"), "a leading / is the context");
        assert!(d.excludes("tmp/x"));
        assert!(d.excludes("logs/new/1"));
        assert!(!d.excludes("# a comment"));
        let d = ignore("\u{feff}first\n");
        assert!(
            d.excludes("first"),
            "a byte-order mark is not part of the pattern"
        );
        assert_eq!(
            Dockerignore::parse("a\n!\n").unwrap_err().to_string(),
            "line 2: \"!\" must be followed by a pattern"
        );
        assert!(Dockerignore::parse("[abc\n").is_err());
        assert_eq!(clean("a/./b/../c/"), "a/c");
        assert_eq!(clean("../x"), "../x");
        assert_eq!(clean("/"), "/");
        assert_eq!(clean(""), ".");
    }
}
