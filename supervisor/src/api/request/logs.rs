//! `GET /v1/vms/{vm}/logs?follow=&service=&channel=&lines=`.

use std::collections::HashMap;

use dstack_proto::supervisor::LogChannel;

use crate::api::Command;
use crate::error::VmmError;
use crate::logs::{DEFAULT_LINES, LogQuery};

/// Parses the query string (unknown parameters refused, like unknown body fields).
pub fn logs(vm: String, params: &HashMap<String, String>) -> Result<Command, VmmError> {
    let mut query = LogQuery {
        channel: LogChannel::App,
        service: None,
        lines: DEFAULT_LINES,
        follow: false,
    };
    for (key, value) in params {
        match key.as_str() {
            "follow" => query.follow = flag("follow", value)?,
            "service" if !value.is_empty() => query.service = Some(value.clone()),
            "service" => {}
            "channel" => {
                query.channel = match value.as_str() {
                    "app" | "" => LogChannel::App,
                    "serial" => LogChannel::Serial,
                    other => {
                        return Err(VmmError::invalid(
                            "channel",
                            format!("{other:?} is not app or serial"),
                        ));
                    }
                }
            }
            "lines" => {
                query.lines = value
                    .parse()
                    .map_err(|_| VmmError::invalid("lines", format!("{value:?} is not a number")))?
            }
            other => {
                return Err(VmmError::invalid(
                    other,
                    "unknown parameter (follow, service, channel, lines)",
                ));
            }
        }
    }
    if query.service.is_some() && query.channel == LogChannel::Serial {
        return Err(VmmError::invalid(
            "service",
            "only applies to the app channel",
        ));
    }
    Ok(Command::Logs { vm, query })
}

fn flag(name: &str, value: &str) -> Result<bool, VmmError> {
    match value {
        "" | "1" | "true" | "yes" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        other => Err(VmmError::invalid(
            name,
            format!("{other:?} is not a boolean"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_and_refuses() {
        match logs("web".into(), &params(&[])).unwrap() {
            Command::Logs { vm, query } => {
                assert_eq!(vm, "web");
                assert_eq!(query.channel, LogChannel::App);
                assert_eq!(query.lines, DEFAULT_LINES);
                assert!(!query.follow);
            }
            other => panic!("{other:?}"),
        }
        let all = params(&[("follow", "true"), ("service", "db"), ("lines", "5")]);
        match logs("web".into(), &all).unwrap() {
            Command::Logs { query, .. } => {
                assert!(query.follow);
                assert_eq!(query.service.as_deref(), Some("db"));
                assert_eq!(query.lines, 5);
            }
            other => panic!("{other:?}"),
        }
        let field = |p: &[(&str, &str)]| match logs("w".into(), &params(p)) {
            Err(VmmError::Invalid { field, .. }) => field,
            other => panic!("{other:?}"),
        };
        assert_eq!(field(&[("follow", "maybe")]), "follow");
        assert_eq!(field(&[("channel", "stdout")]), "channel");
        assert_eq!(field(&[("lines", "-1")]), "lines");
        assert_eq!(field(&[("tail", "1")]), "tail");
        assert_eq!(
            field(&[("channel", "serial"), ("service", "web")]),
            "service"
        );
    }
}
