//! From the bytes of one file to resolved pods and placed diagnostics.
//!
//! serde_yaml reads the documents into values (syntax errors carry their line
//! and column), serde_ignored and serde_path_to_error turn each into the typed
//! manifest while naming unknown fields and type errors by path, and a second
//! pass over yaml-rust2's marked events maps every field path to its line and
//! column, so problems found later by `resolve` are placed in the file too.

use std::collections::HashMap;

use serde::Deserialize;
use serde_yaml::Value;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::diag::{push_index, push_key, Diagnostic, Issue, Issues, Severity};
use crate::manifest::Document;
use crate::plan::PodPlan;
use crate::resolve::{resolve_pod, NodeInfo};

/// Files larger than this are refused before parsing (Kubernetes' own object
/// limit is about 1.5 MiB).
pub const MAX_MANIFEST_BYTES: usize = 1024 * 1024;

/// What one file holds: its pods that resolved, and every problem found.
#[derive(Debug, Default)]
pub struct FileReport {
    pub pods: Vec<PodPlan>,
    pub diagnostics: Vec<Diagnostic>,
}

impl FileReport {
    pub fn has_errors(&self) -> bool {
        self.diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error)
    }
}

/// Loads one manifest file. `file` names it in diagnostics; nothing is read
/// from disk. Never panics on any input.
pub fn load(file: &str, bytes: &[u8], node: &NodeInfo) -> FileReport {
    let mut report = FileReport::default();
    let file_error = |message: String, line: Option<usize>, column: Option<usize>| {
        vec![Diagnostic {
            severity: Severity::Error,
            file: file.to_string(),
            line,
            column,
            path: String::new(),
            message,
        }]
    };
    if bytes.len() > MAX_MANIFEST_BYTES {
        report.diagnostics = file_error(
            format!(
                "file is {} bytes: at most {MAX_MANIFEST_BYTES} allowed",
                bytes.len()
            ),
            None,
            None,
        );
        return report;
    }
    let text = match std::str::from_utf8(bytes) {
        Ok(t) => t,
        Err(e) => {
            report.diagnostics = file_error(format!("not UTF-8 text: {e}"), None, None);
            return report;
        }
    };
    let mut docs = Vec::new();
    for de in serde_yaml::Deserializer::from_str(text) {
        match Value::deserialize(de) {
            Ok(v) => docs.push(v),
            Err(e) => {
                let loc = e.location();
                let msg = strip_location(&e.to_string());
                report.diagnostics = file_error(
                    format!("invalid YAML: {msg}"),
                    loc.as_ref().map(|l| l.line()),
                    loc.as_ref().map(|l| l.column()),
                );
                return report;
            }
        }
    }
    let positions = Positions::index(text, docs.len());
    let mut seen_names: HashMap<String, String> = HashMap::new();
    for (doc_index, mut value) in docs.into_iter().enumerate() {
        if value.is_null() {
            continue; // An empty document (a stray `---`), as kubectl skips it.
        }
        let mut issues = Issues::default();
        if let Err(e) = value.apply_merge() {
            issues.error("", format!("invalid YAML merge key: {e}"));
        }
        for (path, item) in pods_in(value, &mut issues) {
            let mut pod_issues = Issues::default();
            if let Some(plan) = resolve_value(&path, item, node, &mut pod_issues) {
                let name = plan.name.to_string();
                if let Some(first) = seen_names.insert(name.clone(), path.clone()) {
                    pod_issues.error(
                        push_key(&push_key(&path, "metadata"), "name"),
                        format!(
                            "pod {name:?} is defined twice in this file (first at {})",
                            describe(&first)
                        ),
                    );
                } else if !pod_issues.has_errors() {
                    report.pods.push(plan);
                }
            }
            for i in pod_issues.into_vec() {
                report.diagnostics.push(positions.place(file, doc_index, i));
            }
        }
        for i in issues.into_vec() {
            report.diagnostics.push(positions.place(file, doc_index, i));
        }
    }
    // Document order, then position; problems without a position last.
    report
        .diagnostics
        .sort_by_key(|d| (d.line.is_none(), d.line, d.column));
    report
}

fn describe(path: &str) -> String {
    if path.is_empty() {
        "the document".into()
    } else {
        path.to_string()
    }
}

/// The pod values a document holds, with the path prefix of each: the document
/// itself for `kind: Pod`, `items[i]` for `kind: List`.
fn pods_in(value: Value, issues: &mut Issues) -> Vec<(String, Value)> {
    let kind = value
        .get("kind")
        .and_then(Value::as_str)
        .map(str::to_string);
    match kind.as_deref() {
        Some("List" | "PodList") => {
            let api = value.get("apiVersion").and_then(Value::as_str);
            if api != Some("v1") {
                issues.error(
                    "apiVersion",
                    format!("a List must have apiVersion \"v1\", found {api:?}"),
                );
            }
            match value.get("items") {
                Some(Value::Sequence(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (push_index("items", i), v.clone()))
                    .collect(),
                Some(Value::Null) | None => Vec::new(),
                Some(_) => {
                    issues.error("items", "must be a list of Pods");
                    Vec::new()
                }
            }
        }
        _ => vec![(String::new(), value)],
    }
}

/// Types one pod value and resolves it; reports unknown fields and type errors
/// at their paths under `prefix`.
fn resolve_value(
    prefix: &str,
    value: Value,
    node: &NodeInfo,
    issues: &mut Issues,
) -> Option<PodPlan> {
    if !value.is_mapping() {
        issues.error(
            prefix,
            "expected a Pod (a mapping with apiVersion, kind, metadata and spec)",
        );
        return None;
    }
    if let Some(kind) = value
        .get("kind")
        .and_then(Value::as_str)
        .filter(|k| *k != "Pod")
    {
        issues.error(
            push_key(prefix, "kind"),
            format!(
                "{kind:?} is not supported: podagent runs kind \"Pod\" (or a \"List\" of them)"
            ),
        );
        return None;
    }
    let mut unknown = Vec::new();
    let mut on_unknown = |p: serde_ignored::Path<'_>| unknown.push(ignored_path(prefix, &p));
    let typed: Result<Document, _> =
        serde_path_to_error::deserialize(serde_ignored::Deserializer::new(value, &mut on_unknown));
    let doc = match typed {
        Ok(d) => d,
        Err(e) => {
            let path = error_path(prefix, e.path());
            issues.error(path, e.into_inner().to_string());
            return None;
        }
    };
    for p in unknown {
        issues.unknown_field(p, node.warn_unknown_fields);
    }
    resolve_pod(prefix, &doc, node, issues)
}

fn ignored_path(prefix: &str, p: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match p {
        Path::Root => prefix.to_string(),
        Path::Seq { parent, index } => push_index(&ignored_path(prefix, parent), *index),
        Path::Map { parent, key } => push_key(&ignored_path(prefix, parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(prefix, parent),
    }
}

fn error_path(prefix: &str, p: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    p.iter().fold(prefix.to_string(), |acc, seg| match seg {
        Segment::Seq { index } => push_index(&acc, *index),
        Segment::Map { key } => push_key(&acc, key),
        Segment::Enum { variant } => push_key(&acc, variant),
        Segment::Unknown => acc,
    })
}

/// serde_yaml appends " at line L column C" to its messages; the location is
/// reported in its own fields.
fn strip_location(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// Line and column of every field path, per document.
#[derive(Debug, Default)]
struct Positions {
    docs: Vec<HashMap<String, (Marker, Marker)>>,
}

impl Positions {
    /// Indexes `text`; if yaml-rust2 disagrees with serde_yaml on the number of
    /// documents, positions are dropped rather than misplaced.
    fn index(text: &str, expected_docs: usize) -> Self {
        let mut rx = Indexer::default();
        let mut parser = Parser::new_from_str(text);
        if parser.load(&mut rx, true).is_err() || rx.docs.len() != expected_docs {
            return Positions::default();
        }
        Positions { docs: rx.docs }
    }

    fn place(&self, file: &str, doc: usize, issue: Issue) -> Diagnostic {
        let mut pos = None;
        if let Some(map) = self.docs.get(doc) {
            // The field itself, or its nearest ancestor present in the file
            // (a missing field is reported where its parent is).
            let mut path = issue.path.as_str();
            loop {
                if let Some((key, value)) = map.get(path) {
                    pos = Some(if issue.at_key { *key } else { *value });
                    break;
                }
                match path.rfind(['.', '[']) {
                    Some(i) => path = &path[..i],
                    None if !path.is_empty() => path = "",
                    None => break,
                }
            }
        }
        Diagnostic {
            severity: issue.severity,
            file: file.to_string(),
            line: pos.map(|m| m.line()),
            column: pos.map(|m| m.col() + 1),
            path: issue.path,
            message: issue.message,
        }
    }
}

enum Frame {
    Map {
        path: String,
        key: Option<(String, Marker)>,
        first: bool,
    },
    Seq {
        path: String,
        next: usize,
    },
}

#[derive(Default)]
struct Indexer {
    docs: Vec<HashMap<String, (Marker, Marker)>>,
    current: HashMap<String, (Marker, Marker)>,
    stack: Vec<Frame>,
}

impl Indexer {
    /// The path of the node that starts now, and the mark of its key; `None`
    /// when the node is a mapping key.
    fn enter_node(&mut self, mark: Marker, scalar: Option<&str>) -> Option<(String, Marker)> {
        match self.stack.last_mut() {
            None => Some((String::new(), mark)),
            Some(Frame::Seq { path, next }) => {
                let p = push_index(path, *next);
                *next += 1;
                Some((p, mark))
            }
            Some(Frame::Map { path, key, first }) => match key.take() {
                Some((k, key_mark)) => Some((push_key(path, &k), key_mark)),
                None => {
                    *key = Some((scalar.unwrap_or("?").to_string(), mark));
                    // A block mapping's start event is marked at its first
                    // ':'; place the mapping at its first key instead.
                    if std::mem::take(first) {
                        if let Some(entry) = self.current.get_mut(path.as_str()) {
                            entry.1 = mark;
                        }
                    }
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Indexer {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::DocumentStart => {
                self.current.clear();
                self.stack.clear();
            }
            Event::DocumentEnd => self.docs.push(std::mem::take(&mut self.current)),
            Event::Scalar(ref s, ..) => {
                if let Some((path, key_mark)) = self.enter_node(mark, Some(s)) {
                    self.current.entry(path).or_insert((key_mark, mark));
                }
            }
            Event::Alias(_) => {
                if let Some((path, key_mark)) = self.enter_node(mark, None) {
                    self.current.entry(path).or_insert((key_mark, mark));
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                // A collection used as a mapping key has no path of its own.
                let entered = self.enter_node(mark, None);
                let path = match entered {
                    Some((path, key_mark)) => {
                        self.current.entry(path.clone()).or_insert((key_mark, mark));
                        path
                    }
                    None => "?".to_string(),
                };
                self.stack.push(if matches!(ev, Event::MappingStart(..)) {
                    Frame::Map {
                        path,
                        key: None,
                        first: true,
                    }
                } else {
                    Frame::Seq { path, next: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            Event::StreamStart | Event::StreamEnd | Event::Nothing => {}
        }
    }
}
