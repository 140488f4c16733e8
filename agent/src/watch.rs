//! The pods directory as desired state (DESIGN rule 2): every valid pod of
//! every manifest file; a file that stops parsing or validating keeps its last
//! good pods, with its errors reported; a pod name defined by two files
//! belongs to the first file by name, the other is reported as a conflict.
//! Editor temp files, dotfiles and other extensions are ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use specs::{Diagnostic, NodeInfo, PodPlan, Severity};

use crate::cli::validate::is_manifest_name;

/// Files larger than this are refused without being read whole.
const MAX_FILE: u64 = specs::load::MAX_MANIFEST_BYTES as u64;

/// One manifest file as last read.
#[derive(Debug, Clone, Default)]
pub struct FileState {
    /// The pods of the last version that had no error.
    pub good: Vec<PodPlan>,
    /// Problems of the current version (errors mean `good` is older).
    pub diagnostics: Vec<Diagnostic>,
}

/// Every manifest file of the directory and what it defines.
#[derive(Debug, Default)]
pub struct Sources {
    pub files: BTreeMap<PathBuf, FileState>,
}

/// The desired pods by `namespace/name`, with the file each came from, and
/// the conflicts found.
#[derive(Debug, Default)]
pub struct DesiredState {
    pub pods: BTreeMap<String, (PathBuf, PodPlan)>,
    pub conflicts: Vec<String>,
}

impl Sources {
    /// Re-reads the whole directory (start, resync, inotify overflow).
    pub fn resync(&mut self, dir: &Path, node: &NodeInfo) {
        let mut seen = Vec::new();
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let p = e.path();
                if is_manifest_name(&p) && p.is_file() {
                    self.read(&p, node);
                    seen.push(p);
                }
            }
        }
        self.files.retain(|p, _| seen.contains(p));
    }

    /// Reads one file again (it was written or moved into place), or forgets
    /// it (it was removed or renamed away).
    pub fn refresh(&mut self, path: &Path, node: &NodeInfo) {
        if !is_manifest_name(path) {
            return;
        }
        if path.is_file() {
            self.read(path, node);
        } else {
            self.files.remove(path);
        }
    }

    fn read(&mut self, path: &Path, node: &NodeInfo) {
        let name = path.display().to_string();
        let bytes = match std::fs::metadata(path) {
            Ok(m) if m.len() > MAX_FILE => Err(format!(
                "file is {} bytes: at most {MAX_FILE} allowed",
                m.len()
            )),
            _ => std::fs::read(path).map_err(|e| format!("cannot read: {e}")),
        };
        let entry = self.files.entry(path.to_path_buf()).or_default();
        match bytes {
            Ok(b) => {
                let report = specs::load(&name, &b, node);
                if !report.has_errors() {
                    entry.good = report.pods;
                }
                entry.diagnostics = report.diagnostics;
            }
            Err(message) => {
                entry.diagnostics = vec![Diagnostic {
                    severity: Severity::Error,
                    file: name,
                    line: None,
                    column: None,
                    path: String::new(),
                    message,
                }];
            }
        }
    }

    /// The desired pod `namespace/name` (the first file by name wins, as in
    /// `desired`), without building the whole desired state.
    pub fn pod(&self, key: &str) -> Option<&PodPlan> {
        self.files
            .values()
            .flat_map(|f| f.good.iter())
            .find(|p| key.split_once('/') == Some((p.namespace.as_str(), p.name.as_str())))
    }

    /// The desired pods: every file's good pods, the first file by name
    /// winning a name defined twice.
    pub fn desired(&self) -> DesiredState {
        let mut out = DesiredState::default();
        for (path, f) in &self.files {
            for p in &f.good {
                let key = format!("{}/{}", p.namespace, p.name);
                match out.pods.get(&key) {
                    Some((first, _)) => out.conflicts.push(format!(
                        "{}: pod {key} is already defined by {}: the first file by name wins",
                        path.display(),
                        first.display()
                    )),
                    None => {
                        out.pods.insert(key, (path.clone(), p.clone()));
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: NAME}\nspec: {containers: [{name: c, image: busybox, command: [CMD]}]}\n";

    fn pod(name: &str, cmd: &str) -> String {
        POD.replace("NAME", name).replace("CMD", cmd)
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_pods_and_reports_why() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeInfo::default();
        let f = dir.path().join("web.yaml");
        std::fs::write(&f, pod("web", "v1")).unwrap();
        let mut s = Sources::default();
        s.resync(dir.path(), &node);
        let hash = s.desired().pods["default/web"].1.hash.clone();
        std::fs::write(&f, "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: c, image: BAD}]}\n").unwrap();
        s.refresh(&f, &node);
        let d = s.desired();
        assert_eq!(
            d.pods["default/web"].1.hash, hash,
            "the last good version keeps running"
        );
        assert!(s.files[&f]
            .diagnostics
            .iter()
            .any(|d| d.severity == Severity::Error && d.path == "spec.containers[0].image"));
        std::fs::write(&f, pod("web", "v2")).unwrap();
        s.refresh(&f, &node);
        assert_ne!(
            s.desired().pods["default/web"].1.hash,
            hash,
            "fixed: the new version"
        );
        assert!(s.files[&f].diagnostics.is_empty());
    }

    #[test]
    fn temp_and_hidden_files_are_ignored_and_removed_files_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeInfo::default();
        std::fs::write(dir.path().join("a.yaml"), pod("a", "x")).unwrap();
        std::fs::write(dir.path().join(".a.yaml.swp"), "garbage").unwrap();
        std::fs::write(dir.path().join("a.yaml~"), "garbage").unwrap();
        std::fs::write(dir.path().join(".hidden.yaml"), pod("hidden", "x")).unwrap();
        let mut s = Sources::default();
        s.resync(dir.path(), &node);
        assert_eq!(s.desired().pods.keys().collect::<Vec<_>>(), ["default/a"]);
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        s.refresh(&dir.path().join("a.yaml"), &node);
        assert!(s.desired().pods.is_empty());
    }

    #[test]
    fn the_first_file_by_name_wins_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeInfo::default();
        std::fs::write(dir.path().join("b.yaml"), pod("same", "from-b")).unwrap();
        std::fs::write(dir.path().join("a.yml"), pod("same", "from-a")).unwrap();
        let mut s = Sources::default();
        s.resync(dir.path(), &node);
        let d = s.desired();
        assert_eq!(d.pods["default/same"].0, dir.path().join("a.yml"));
        assert_eq!(d.conflicts.len(), 1);
        assert!(d.conflicts[0].contains("b.yaml: pod default/same is already defined by"));
        // One pod looked up alone is the same winner.
        assert_eq!(s.pod("default/same"), Some(&d.pods["default/same"].1));
        assert_eq!(s.pod("default/other"), None);
    }
}
