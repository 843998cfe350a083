//! `.env` files as docker compose reads them (its documented syntax, and
//! compose-go's `dotenv` parser where the documentation is silent), for
//! `dstack vm deploy --env-file`:
//!
//! - blank lines and lines starting with `#` are ignored; `export ` before
//!   a key is dropped; spaces around the key are allowed;
//! - `KEY=value`: an unquoted value is trimmed, and a ` #` (space, hash)
//!   starts a comment (`a#b` keeps its `#`); `KEY=` is the empty string;
//! - `KEY='value'` is literal, except that `\'` is a quote;
//! - `KEY="value"` understands `\n`, `\r`, `\t`, `\"`, `\\` and `\$` (and
//!   `\a`, `\b`, `\f`, `\v`); other backslashes stay as written;
//! - quoted values may span lines; after the closing quote only a comment
//!   may follow;
//! - a key given again replaces the earlier value.
//!
//! Unlike compose, nothing is interpolated: `$OTHER` and `${OTHER}` stay as
//! written (the value is sealed as the file says, never completed from the
//! deploying machine's environment), and a key without `=` is an error
//! rather than a copy of the local environment's value. Keys must be names
//! the guest accepts. Errors give the line and the reason, never a value.

use std::fmt;

use zeroize::Zeroizing;

use crate::var::{is_valid_key, last_wins};
use crate::{EnvVar, MAX_KEY_LEN};

/// A line of an env file that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct DotenvError {
    /// The 1-based line where the variable starts (or the mistake is).
    pub line: usize,
    /// What is wrong with it.
    pub problem: DotenvProblem,
}

/// What is wrong with a line of an env file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DotenvProblem {
    /// A line that is neither blank, a comment, nor `KEY=value`.
    MissingEquals,
    /// The name before `=` is not one the guest accepts.
    InvalidKey,
    /// A quoted value is never closed.
    Unterminated {
        /// `'` or `"`.
        quote: char,
    },
    /// Something other than a comment follows a closing quote.
    TextAfterQuote,
}

impl fmt::Display for DotenvProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingEquals => f.write_str(
                "expected KEY=value (there is no `=`; a value cannot be taken from this \
                 machine's environment)",
            ),
            Self::InvalidKey => write!(
                f,
                "the name before `=` is not a valid variable name (letters, digits and `_`, \
                 not starting with a digit, at most {MAX_KEY_LEN} bytes)"
            ),
            Self::Unterminated { quote } => write!(
                f,
                "the value opened with {quote} here is never closed (a {quote} inside it \
                 is written \\{quote})"
            ),
            Self::TextAfterQuote => f.write_str(
                "unexpected text after the closing quote (only a #comment may follow it)",
            ),
        }
    }
}

/// The variables of an env file, in the order their keys first appear.
pub fn parse_dotenv(text: &str) -> Result<Vec<EnvVar>, DotenvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut parser = Parser {
        text,
        bytes: text.as_bytes(),
        at: 0,
        line: 1,
    };
    let mut vars = Vec::new();
    while let Some(var) = parser.next_var()? {
        vars.push(var);
    }
    Ok(last_wins(vars))
}

struct Parser<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
    line: usize,
}

/// Spaces within a line (compose-go's `isSpace`, ASCII part).
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | 0x0b | 0x0c)
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn error(&self, line: usize, problem: DotenvProblem) -> DotenvError {
        DotenvError { line, problem }
    }

    fn skip_blanks(&mut self) {
        while self.peek().is_some_and(is_blank) {
            self.at += 1;
        }
    }

    /// Up to (not past) the end of this line.
    fn skip_to_line_end(&mut self) {
        while self.peek().is_some_and(|b| b != b'\n') {
            self.at += 1;
        }
    }

    fn next_var(&mut self) -> Result<Option<EnvVar>, DotenvError> {
        // Blank lines and comment lines.
        loop {
            match self.peek() {
                None => return Ok(None),
                Some(b'\n') => {
                    self.line += 1;
                    self.at += 1;
                }
                Some(b) if is_blank(b) => self.at += 1,
                Some(b'#') => self.skip_to_line_end(),
                Some(_) => break,
            }
        }
        let line = self.line;
        let rest = &self.bytes[self.at..];
        if rest.starts_with(b"export") && rest.get(6).is_some_and(|&b| b == b' ' || b == b'\t') {
            self.at += 6;
            self.skip_blanks();
        }

        let key_start = self.at;
        while self.peek().is_some_and(|b| b != b'=' && b != b'\n') {
            self.at += 1;
        }
        if self.peek() != Some(b'=') {
            return Err(self.error(line, DotenvProblem::MissingEquals));
        }
        let key = self.text[key_start..self.at].trim_end_matches([' ', '\t']);
        self.at += 1;
        if !is_valid_key(key) {
            return Err(self.error(line, DotenvProblem::InvalidKey));
        }
        let key = key.to_owned();

        self.skip_blanks();
        let value = match self.peek() {
            Some(quote @ (b'"' | b'\'')) => {
                self.at += 1;
                let value = self.quoted(quote, line)?;
                self.skip_blanks();
                match self.peek() {
                    None | Some(b'\n') => {}
                    Some(b'#') => self.skip_to_line_end(),
                    Some(_) => return Err(self.error(self.line, DotenvProblem::TextAfterQuote)),
                }
                value
            }
            _ => self.unquoted(),
        };
        Ok(Some(EnvVar { key, value }))
    }

    /// The rest of the line, up to a ` #` comment, trimmed.
    fn unquoted(&mut self) -> Zeroizing<String> {
        let start = self.at;
        self.skip_to_line_end();
        let raw = &self.text[start..self.at];
        let raw = raw.split_once(" #").map_or(raw, |(value, _)| value);
        Zeroizing::new(raw.trim_end().to_owned())
    }

    /// A quoted value, after its opening `quote`, up to the closing one.
    fn quoted(&mut self, quote: u8, line: usize) -> Result<Zeroizing<String>, DotenvError> {
        let mut out = Zeroizing::new(Vec::new());
        loop {
            let Some(b) = self.peek() else {
                let quote = char::from(quote);
                return Err(self.error(line, DotenvProblem::Unterminated { quote }));
            };
            self.at += 1;
            match b {
                b'\n' => {
                    self.line += 1;
                    out.push(b);
                }
                b'\\' if self.peek().is_some() => {
                    let next = self.bytes[self.at];
                    self.at += 1;
                    match (quote, next) {
                        (_, next) if next == quote => out.push(next),
                        (b'"', b'n') => out.push(b'\n'),
                        (b'"', b'r') => out.push(b'\r'),
                        (b'"', b't') => out.push(b'\t'),
                        (b'"', b'\\') => out.push(b'\\'),
                        (b'"', b'$') => out.push(b'$'),
                        (b'"', b'a') => out.push(0x07),
                        (b'"', b'b') => out.push(0x08),
                        (b'"', b'f') => out.push(0x0c),
                        (b'"', b'v') => out.push(0x0b),
                        // Kept as written, the next character included (so
                        // in single quotes `\\` stays `\\`, as in compose).
                        (_, next) => {
                            if next == b'\n' {
                                self.line += 1;
                            }
                            out.extend_from_slice(&[b'\\', next]);
                        }
                    }
                }
                b if b == quote => break,
                b => out.push(b),
            }
        }
        // Only ASCII bytes were dropped or replaced, so this is still UTF-8.
        let bytes = std::mem::take(&mut *out);
        let value = String::from_utf8(bytes).expect("UTF-8 with ASCII escapes resolved");
        Ok(Zeroizing::new(value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<(String, String)> {
        parse_dotenv(text)
            .unwrap()
            .into_iter()
            .map(|var| (var.key, var.value.to_string()))
            .collect()
    }

    fn one(text: &str) -> String {
        let vars = parse(text);
        assert_eq!(vars.len(), 1, "{text}");
        vars[0].1.clone()
    }

    fn err(text: &str) -> DotenvError {
        parse_dotenv(text).unwrap_err()
    }

    /// The examples of docker's "Syntax for environment files" page, with
    /// the values it gives for them.
    #[test]
    fn compose_documented_examples() {
        for (line, value) in [
            ("VAR=VAL", "VAL"),
            (r#"VAR="VAL""#, "VAL"),
            ("VAR='VAL'", "VAL"),
            ("VAR=VAL # comment", "VAL"),
            ("VAR=VAL# not a comment", "VAL# not a comment"),
            (r#"VAR="VAL # not a comment""#, "VAL # not a comment"),
            (r#"VAR="VAL" # comment"#, "VAL"),
            ("VAR='$OTHER'", "$OTHER"),
            ("VAR='${OTHER}'", "${OTHER}"),
            (r"VAR='Let\'s go!'", "Let's go!"),
            (r#"VAR="{\"hello\": \"json\"}""#, r#"{"hello": "json"}"#),
            (r#"VAR="some\tvalue""#, "some\tvalue"),
            (r"VAR='some\tvalue'", r"some\tvalue"),
            (r"VAR=some\tvalue", r"some\tvalue"),
        ] {
            assert_eq!(one(line), value, "{line}");
        }
    }

    #[test]
    fn comments_blank_lines_export_and_empty() {
        let text = "\n# a comment\n   # indented comment\n\nexport A=1\nexport\tB = 2 \nC=\nD=''\nE=\"\"\n  F=six\n";
        assert_eq!(
            parse(text),
            [
                ("A", "1"),
                ("B", "2"),
                ("C", ""),
                ("D", ""),
                ("E", ""),
                ("F", "six")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        // `export` is a prefix only when a space follows; otherwise it is the key.
        assert_eq!(parse("export=1\nexportX=2")[0].0, "export");
        assert_eq!(parse("export=1\nexportX=2")[1].0, "exportX");
        assert_eq!(parse(""), vec![]);
        assert_eq!(parse("# only a comment"), vec![]);
    }

    #[test]
    fn double_quoted_escapes_and_lines() {
        assert_eq!(one(r#"A="a\nb\tc\\d\"e\$f\rg""#), "a\nb\tc\\d\"e$f\rg");
        // Unknown escapes stay as written; `\\n` is a backslash then `n`.
        assert_eq!(one(r#"A="\q\'\\n""#), r"\q\'\n");
        assert_eq!(
            parse("CERT=\"-----BEGIN-----\nMIIB\n-----END-----\"\nNEXT=1"),
            [
                ("CERT", "-----BEGIN-----\nMIIB\n-----END-----"),
                ("NEXT", "1")
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert_eq!(one(r#"A="a\\""#), "a\\");
    }

    #[test]
    fn single_quoted_is_literal_and_multiline() {
        assert_eq!(one(r"A='a\nb \\ c $HOME'"), r"a\nb \\ c $HOME");
        assert_eq!(one("A='line 1\nline 2' # comment"), "line 1\nline 2");
        assert_eq!(one(r#"A='say "hi"'"#), r#"say "hi""#);
        assert_eq!(one(r"A='a\\'"), r"a\\");
    }

    #[test]
    fn unquoted_is_trimmed_and_not_interpolated() {
        assert_eq!(one("A=   spaced value   "), "spaced value");
        assert_eq!(one("A=$OTHER"), "$OTHER");
        assert_eq!(one("A=${OTHER:-x}"), "${OTHER:-x}");
        assert_eq!(one("A=a=b=c"), "a=b=c");
        // A quote inside an unquoted value is an ordinary character.
        assert_eq!(one(r#"A=it's "fine""#), r#"it's "fine""#);
        assert_eq!(one("A=p@ss#word"), "p@ss#word");
        assert_eq!(one("A=caf\u{e9} \u{1f600}"), "caf\u{e9} \u{1f600}");
        // As compose-go: spaces before the value go first, so a lone
        // ` # ...` after `=` is the value.
        assert_eq!(one("A= #not a comment"), "#not a comment");
        // CRLF line ends.
        assert_eq!(
            parse("A=1\r\nB=\"2\"\r\n"),
            [("A", "1"), ("B", "2")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn a_repeated_key_takes_the_last_value() {
        assert_eq!(
            parse("A=1\nB=2\nA=3"),
            [("A", "3"), ("B", "2")].map(|(k, v)| (k.to_string(), v.to_string()))
        );
    }

    #[test]
    fn errors_name_the_line_and_reason() {
        assert_eq!(
            err("A=1\n\nNOEQUALS\n"),
            DotenvError {
                line: 3,
                problem: DotenvProblem::MissingEquals
            }
        );
        for bad in ["1A=x", "A-B=x", "A B=x", "=x", "A.B=x", "A:x=1"] {
            assert_eq!(
                err(&format!("# c\n{bad}")),
                DotenvError {
                    line: 2,
                    problem: DotenvProblem::InvalidKey
                },
                "{bad}"
            );
        }
        assert_eq!(
            err("A=1\nB=\"never\nclosed\n"),
            DotenvError {
                line: 2,
                problem: DotenvProblem::Unterminated { quote: '"' }
            }
        );
        assert_eq!(
            err("B='never closed"),
            DotenvError {
                line: 1,
                problem: DotenvProblem::Unterminated { quote: '\'' }
            }
        );
        // The line of the closing quote, after a multi-line value.
        assert_eq!(
            err("A=\"x\ny\" z=1"),
            DotenvError {
                line: 2,
                problem: DotenvProblem::TextAfterQuote
            }
        );
        assert_eq!(
            err("A=\"x\"y").to_string().split(':').next(),
            Some("line 1")
        );
    }

    /// A value (or a line that may be one) never shows in an error.
    #[test]
    fn errors_never_show_values() {
        const SECRET: &str = "s3cr3t";
        let texts = [
            format!("KEY=\"{SECRET}"),
            format!("KEY='{SECRET}"),
            format!("KEY=\"ok\" {SECRET}"),
            // A multi-line value someone forgot to quote: the next line has no `=`…
            format!("CERT=-----BEGIN\n{SECRET}\n"),
            // …or a base64 `=` that makes its start look like a key.
            format!("CERT=-----BEGIN\n{SECRET}+/x==\n"),
            format!("{SECRET} value=1"),
        ];
        for text in texts {
            let err = err(&text);
            let shown = format!("{err} | {err:?}");
            assert!(!shown.contains(SECRET), "{shown}");
        }
    }
}
