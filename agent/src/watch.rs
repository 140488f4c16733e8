//! The pods directory as desired state (DESIGN rule 2): every valid pod of
//! every manifest file; a file that stops parsing or validating keeps its last
//! good pods, with its errors reported; a pod name defined by two files
//! belongs to the first file by name, the other is reported as a conflict.
//! Editor temp files, dotfiles and other extensions are ignored. With
//! `recursive`, the manifests of subdirectories are read too (see `tree`).

use std::collections::{BTreeMap, HashMap};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};

use specs::{Diagnostic, NodeInfo, PodPlan, Severity};

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

/// How deep `tree` goes below the pods dir.
pub const MAX_DEPTH: usize = 8;

/// Every manifest file of the directory and what it defines.
#[derive(Debug, Default)]
pub struct Sources {
    pub files: BTreeMap<PathBuf, FileState>,
    /// Subdirectories are read too.
    pub recursive: bool,
    /// The files of the git revision the node runs (`--git-repo`),
    /// replaced whole when a revision is applied; after the pods dir's.
    pub synced: BTreeMap<PathBuf, FileState>,
}

/// The directories whose manifests are read: `dir` itself and, with
/// `recursive`, every directory below it down to `MAX_DEPTH`, except hidden
/// ones (`.git`, an editor's or a sync tool's own) and symlinks (never
/// followed: no loops, nothing outside the tree).
pub fn tree(dir: &Path, recursive: bool) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut next = 0;
    while recursive && next < out.len() {
        let d = out[next].clone();
        next += 1;
        let depth = d.strip_prefix(dir).map_or(0, |r| r.components().count());
        if depth >= MAX_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        let mut subdirs: Vec<PathBuf> = entries
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        subdirs.sort();
        out.extend(subdirs);
    }
    out
}

/// `*.yaml`, `*.yml`, `*.json`, not hidden (dotfiles, editor temp files).
pub fn is_manifest_name(p: &Path) -> bool {
    let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
        return false;
    };
    !name.starts_with('.')
        && [".yaml", ".yml", ".json"]
            .iter()
            .any(|ext| name.ends_with(ext))
}

/// The desired pods by `namespace/name`, with the file each came from, and
/// the conflicts found.
#[derive(Debug, Default)]
pub struct DesiredState {
    pub pods: BTreeMap<String, (PathBuf, PodPlan)>,
    pub conflicts: Vec<String>,
}

impl Sources {
    /// A directory's sources, with or without its subdirectories.
    pub fn new(recursive: bool) -> Self {
        Sources {
            recursive,
            ..Sources::default()
        }
    }

    /// Re-reads the whole directory (start, resync, inotify overflow, a
    /// subdirectory made or removed).
    pub fn resync(&mut self, dir: &Path, node: &NodeInfo) {
        let mut seen = std::collections::BTreeSet::new();
        for d in tree(dir, self.recursive) {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                if is_manifest_name(&p) && p.is_file() {
                    self.read(&p, node);
                    seen.insert(p);
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
        let state = read_file(path, node, self.files.remove(path).unwrap_or_default());
        self.files.insert(path.to_path_buf(), state);
    }

    /// The desired pod `namespace/name` (the first file by name wins, as in
    /// `desired`), without building the whole desired state.
    pub fn pod(&self, key: &str) -> Option<&PodPlan> {
        self.files
            .values()
            .chain(self.synced.values())
            .flat_map(|f| f.good.iter())
            .find(|p| key.split_once('/') == Some((p.namespace.as_str(), p.name.as_str())))
    }

    /// The desired pods: every file's good pods, the first file by name
    /// winning a name defined twice (the pods dir's before the synced
    /// revision's).
    pub fn desired(&self) -> DesiredState {
        let mut out = DesiredState::default();
        for (path, f) in self.files.iter().chain(&self.synced) {
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

/// A manifest file read again over what it was (`entry`): its pods when the
/// new version is good, its problems.
pub fn read_file(path: &Path, node: &NodeInfo, mut entry: FileState) -> FileState {
    let name = path.display().to_string();
    let bytes = match std::fs::metadata(path) {
        Ok(m) if m.len() > MAX_FILE => Err(format!(
            "file is {} bytes: at most {MAX_FILE} allowed",
            m.len()
        )),
        _ => std::fs::read(path).map_err(|e| format!("cannot read: {e}")),
    };
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
    entry
}

/// The file events the pods dir is watched for: a write finished, a rename
/// into or out of place, a removal. A directory made or removed (with
/// `recursive`) comes as `IN_CREATE` and the same with `IN_ISDIR`.
fn watch_flags(recursive: bool) -> AddWatchFlags {
    let files = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE;
    if recursive {
        files | AddWatchFlags::IN_CREATE
    } else {
        files
    }
}

/// What the watch saw since it was last read.
#[derive(Debug, PartialEq, Eq)]
pub enum Changes {
    /// These files changed, appeared or went.
    Files(Vec<PathBuf>),
    /// Read everything again: the queue overflowed, or a subdirectory came
    /// or went (its watches are already mended).
    Resync,
}

/// The pods dir cannot be watched.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("inotify")]
    Init(#[source] nix::Error),
    #[error("watch {}", path.display())]
    Add {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// inotify on the pods dir and, with `recursive`, on each directory `tree`
/// lists, kept in step as directories come and go.
#[derive(Debug)]
pub struct DirWatch {
    ino: Inotify,
    root: PathBuf,
    recursive: bool,
    dirs: HashMap<WatchDescriptor, PathBuf>,
}

impl DirWatch {
    pub fn new(root: &Path, recursive: bool) -> Result<Self, WatchError> {
        let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(WatchError::Init)?;
        let mut w = DirWatch {
            ino,
            root: root.to_path_buf(),
            recursive,
            dirs: HashMap::new(),
        };
        let wd = w
            .ino
            .add_watch(root, watch_flags(recursive))
            .map_err(|source| WatchError::Add {
                path: root.to_path_buf(),
                source,
            })?;
        w.dirs.insert(wd, root.to_path_buf());
        w.rewatch();
        Ok(w)
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ino.as_fd()
    }

    /// Watches every directory of the tree, and no other.
    fn rewatch(&mut self) {
        if !self.recursive {
            return;
        }
        let now = tree(&self.root, true);
        for d in &now {
            // The same directory (even renamed) keeps its descriptor.
            if let Ok(wd) = self.ino.add_watch(d, watch_flags(true)) {
                self.dirs.insert(wd, d.clone());
            }
        }
        let gone: Vec<WatchDescriptor> = self
            .dirs
            .iter()
            .filter(|(_, d)| !now.contains(d))
            .map(|(wd, _)| *wd)
            .collect();
        for wd in gone {
            let _ = self.ino.rm_watch(wd);
            self.dirs.remove(&wd);
        }
    }

    /// The events waiting, read without blocking.
    pub fn changes(&mut self) -> Changes {
        let mut files = Vec::new();
        let mut resync = false;
        for ev in self.ino.read_events().unwrap_or_default() {
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                resync = true;
            } else if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                self.dirs.remove(&ev.wd);
            } else if ev.mask.contains(AddWatchFlags::IN_ISDIR) {
                resync |= self.recursive;
            } else if let (Some(name), Some(dir)) = (ev.name, self.dirs.get(&ev.wd)) {
                if !ev.mask.contains(AddWatchFlags::IN_CREATE) {
                    files.push(dir.join(name));
                }
            }
        }
        if resync {
            self.rewatch();
            return Changes::Resync;
        }
        files.dedup();
        Changes::Files(files)
    }

    /// How many directories are watched.
    pub fn watched(&self) -> usize {
        self.dirs.len()
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
    fn subdirectories_are_read_only_when_recursive_and_never_hidden_or_linked() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeInfo::default();
        let root = dir.path();
        for d in ["team-a/web", ".git", "team-b"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("top.yaml"), pod("top", "x")).unwrap();
        std::fs::write(root.join("team-a/web/web.yaml"), pod("web", "x")).unwrap();
        std::fs::write(root.join(".git/HEAD.yaml"), pod("git", "x")).unwrap();
        std::os::unix::fs::symlink(root.join("team-a"), root.join("team-b/link")).unwrap();
        std::os::unix::fs::symlink(root, root.join("team-b/loop")).unwrap();
        let keys = |s: &Sources| s.desired().pods.into_keys().collect::<Vec<_>>();
        let mut flat = Sources::new(false);
        flat.resync(root, &node);
        assert_eq!(keys(&flat), ["default/top"]);
        let mut deep = Sources::new(true);
        deep.resync(root, &node);
        assert_eq!(keys(&deep), ["default/top", "default/web"]);
        assert_eq!(
            tree(root, true),
            [
                root.to_path_buf(),
                root.join("team-a"),
                root.join("team-b"),
                root.join("team-a/web")
            ]
        );
        // A removed subdirectory's pods go on the next resync.
        std::fs::remove_dir_all(root.join("team-a")).unwrap();
        deep.resync(root, &node);
        assert_eq!(keys(&deep), ["default/top"]);
    }

    #[test]
    fn the_watch_follows_subdirectories_as_they_come_and_go() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut w = DirWatch::new(root, true).unwrap();
        assert_eq!(w.watched(), 1);
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        assert_eq!(w.changes(), Changes::Resync);
        assert_eq!(w.watched(), 3);
        std::fs::write(root.join("a/b/p.yaml"), "x").unwrap();
        assert_eq!(w.changes(), Changes::Files(vec![root.join("a/b/p.yaml")]));
        // Moved out of the tree: no longer watched.
        std::fs::rename(root.join("a"), dir.path().join(".away")).unwrap();
        assert_eq!(w.changes(), Changes::Resync);
        assert_eq!(w.watched(), 1);
        std::fs::write(root.join(".away/b/q.yaml"), "x").unwrap();
        assert_eq!(w.changes(), Changes::Files(vec![]));
        // Not recursive: a subdirectory is neither watched nor a resync.
        let mut flat = DirWatch::new(root, false).unwrap();
        std::fs::create_dir(root.join("c")).unwrap();
        std::fs::write(root.join("c/r.yaml"), "x").unwrap();
        std::fs::write(root.join("top.yaml"), "x").unwrap();
        assert_eq!(flat.changes(), Changes::Files(vec![root.join("top.yaml")]));
        assert_eq!(flat.watched(), 1);
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
