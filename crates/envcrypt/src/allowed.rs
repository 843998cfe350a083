//! Only the variables an app allows: upstream's guest keeps the keys listed
//! in app-compose `allowed_envs` and skips the others with a warning.

use std::collections::HashSet;

use crate::EnvVar;

/// Splits `vars` into those whose key is in `allowed` (in their order) and
/// the keys of the others (each once, in order), which the guest reports
/// in a warning naming the key, never the value. The keys come from the
/// blob: print them escaped (`{:?}`).
pub fn filter_allowed(vars: Vec<EnvVar>, allowed: &[String]) -> (Vec<EnvVar>, Vec<String>) {
    let allowed: HashSet<&str> = allowed.iter().map(String::as_str).collect();
    let mut kept = Vec::with_capacity(vars.len());
    let mut skipped: Vec<String> = Vec::new();
    for var in vars {
        if allowed.contains(var.key.as_str()) {
            kept.push(var);
        } else if !skipped.contains(&var.key) {
            skipped.push(var.key.clone());
        }
        // A skipped value is wiped as it drops here.
    }
    (kept, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_allowed_and_names_the_rest_once() {
        let vars = vec![
            EnvVar::new("A", "1"),
            EnvVar::new("SECRET_B", "2"),
            EnvVar::new("C", "3"),
            EnvVar::new("SECRET_B", "4"),
            EnvVar::new("a", "5"),
        ];
        let allowed = vec!["A".to_string(), "C".to_string(), "UNUSED".to_string()];
        let (kept, skipped) = filter_allowed(vars, &allowed);
        assert_eq!(kept, vec![EnvVar::new("A", "1"), EnvVar::new("C", "3")]);
        // Keys are case-sensitive.
        assert_eq!(skipped, vec!["SECRET_B".to_string(), "a".to_string()]);
    }

    #[test]
    fn nothing_allowed_keeps_nothing() {
        let (kept, skipped) = filter_allowed(vec![EnvVar::new("A", "1")], &[]);
        assert!(kept.is_empty());
        assert_eq!(skipped, vec!["A".to_string()]);
    }
}
