//! Problems found in a manifest: collected (several per file, never only the
//! first), each with its field path, and placed at a line and column by the
//! loader.

use std::fmt;

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The pod cannot run as written.
    Error,
    /// It runs, but probably not as meant (an unknown field, `128m` of memory).
    Warning,
    /// A field accepted and ignored on purpose (cluster-only fields).
    Note,
}

/// A problem at a field path, before it is placed in a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    pub severity: Severity,
    pub path: String,
    pub message: String,
    /// Place the problem at the field's key rather than its value (unknown
    /// fields: the key is what is wrong).
    pub at_key: bool,
}

/// Collects the issues of one pod while it is resolved.
#[derive(Debug, Default)]
pub struct Issues {
    list: Vec<Issue>,
}

impl Issues {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Error, path.into(), message.into(), false);
    }
    pub fn warn(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Warning, path.into(), message.into(), false);
    }
    pub fn note(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.push(Severity::Note, path.into(), message.into(), false);
    }
    /// A field the v1 Pod schema does not have: an error, as kubectl
    /// apply's strict field validation has it, unless the node only warns.
    pub fn unknown_field(&mut self, path: String, warn_only: bool) {
        if warn_only {
            self.push(
                Severity::Warning,
                path,
                "unknown field, ignored (misspelled? it is not part of the v1 Pod schema)".into(),
                true,
            );
        } else {
            self.push(
                Severity::Error,
                path,
                "unknown field (misspelled? it is not part of the v1 Pod schema; the agent's --warn-unknown-fields makes it a warning)".into(),
                true,
            );
        }
    }
    fn push(&mut self, severity: Severity, path: String, message: String, at_key: bool) {
        self.list.push(Issue {
            severity,
            path,
            message,
            at_key,
        });
    }
    pub fn has_errors(&self) -> bool {
        self.list.iter().any(|i| i.severity == Severity::Error)
    }
    pub fn error_count(&self) -> usize {
        self.list
            .iter()
            .filter(|i| i.severity == Severity::Error)
            .count()
    }
    pub fn into_vec(self) -> Vec<Issue> {
        self.list
    }
}

/// A problem placed in a file: what `podctl validate` and `podctl status` show.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    pub severity: Severity,
    pub file: String,
    pub line: Option<usize>,
    pub column: Option<usize>,
    /// `spec.containers[1].resources.limits.cpu`; empty for the file itself.
    pub path: String,
    pub message: String,
}

impl fmt::Display for Diagnostic {
    /// `file:line:col: field.path: message`, with `warning: ` or `note: `
    /// before the path for what is not an error.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(col) = self.column {
                write!(f, ":{col}")?;
            }
        }
        f.write_str(": ")?;
        match self.severity {
            Severity::Error => {}
            Severity::Warning => f.write_str("warning: ")?,
            Severity::Note => f.write_str("note: ")?,
        }
        if !self.path.is_empty() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

/// Appends a map key to a field path: `.name` for plain keys, `["a.b/c"]` for
/// keys holding dots, slashes or other punctuation (annotation keys).
pub fn push_key(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key:?}]"),
    }
}

/// Appends a sequence index to a field path: `containers[1]`.
pub fn push_index(path: &str, index: usize) -> String {
    format!("{path}[{index}]")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_read_like_kubectl_explain() {
        let p = push_key(&push_index(&push_key("spec", "containers"), 1), "resources");
        assert_eq!(
            push_key(&push_key(&p, "limits"), "cpu"),
            "spec.containers[1].resources.limits.cpu"
        );
        assert_eq!(
            push_key("metadata.annotations", "cpuset.podagent.io/web"),
            "metadata.annotations[\"cpuset.podagent.io/web\"]"
        );
    }

    #[test]
    fn diagnostics_print_file_line_col_path_message() {
        let mut d = Diagnostic {
            severity: Severity::Error,
            file: "pods/web.yaml".into(),
            line: Some(12),
            column: Some(18),
            path: "spec.containers[0].resources.limits.cpu".into(),
            message: "bad".into(),
        };
        assert_eq!(
            d.to_string(),
            "pods/web.yaml:12:18: spec.containers[0].resources.limits.cpu: bad"
        );
        d.severity = Severity::Warning;
        d.line = None;
        assert_eq!(
            d.to_string(),
            "pods/web.yaml: warning: spec.containers[0].resources.limits.cpu: bad"
        );
    }
}
