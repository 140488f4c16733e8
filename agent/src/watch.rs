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
    /// Where a symlink may lead (`--pods-dir-link-root`; default: the
    /// pods dir's real path). See [`Tree::walk`].
    pub link_root: Option<PathBuf>,
    /// The files of the git revision the node runs (`--git-repo`),
    /// replaced whole when a revision is applied; after the pods dir's.
    pub synced: BTreeMap<PathBuf, FileState>,
    /// The real path links were checked against at the last resync.
    root: PathBuf,
}

/// The directories whose manifests are read, as `tree` found them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Tree {
    /// Each directory as it is named below the pods dir (the name a file
    /// is known by), and its real path at the walk (where it is read).
    pub dirs: Vec<(PathBuf, PathBuf)>,
    /// Symlinks not followed, by name, and why.
    pub refused: Vec<(PathBuf, String)>,
    /// The real path a link must lead beneath (see [`Tree::walk`]).
    pub root: PathBuf,
}

impl Tree {
    /// The pods dir (itself possibly a symlink: the operator's choice, and
    /// what a tool that publishes revisions by a swapped link points at)
    /// and, with `recursive`, every directory below it down to `MAX_DEPTH`,
    /// except hidden ones (`.git`, an editor's or a sync tool's own).
    /// A symlink to a directory is followed only when its real path is
    /// beneath `link_root` (default: the pods dir's own real path) and not
    /// already read (no loops); any other is refused, by name.
    pub fn walk(dir: &Path, recursive: bool, link_root: Option<&Path>) -> Tree {
        let real = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
        let top = real(dir);
        let root = link_root.map_or_else(|| top.clone(), real);
        let mut t = Tree {
            dirs: vec![(dir.to_path_buf(), top)],
            refused: Vec::new(),
            root,
        };
        let mut next = 0;
        while recursive && next < t.dirs.len() {
            let (named, at) = t.dirs[next].clone();
            next += 1;
            let depth = named
                .strip_prefix(dir)
                .map_or(0, |r| r.components().count());
            if depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&at) else {
                continue;
            };
            let mut subdirs: Vec<(PathBuf, PathBuf)> = Vec::new();
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().starts_with('.') {
                    continue;
                }
                let Ok(kind) = e.file_type() else { continue };
                let name = named.join(e.file_name());
                if kind.is_dir() {
                    subdirs.push((name, e.path()));
                } else if kind.is_symlink() && e.path().is_dir() {
                    match t.follow(&e.path()) {
                        Ok(target) => subdirs.push((name, target)),
                        Err(why) => t.refused.push((name, why)),
                    }
                }
            }
            subdirs.sort();
            for (name, at) in subdirs {
                if t.dirs.iter().any(|(_, seen)| *seen == at) {
                    let why = format!("leads to {}, which is already read", at.display());
                    t.refused.push((name, why));
                } else {
                    t.dirs.push((name, at));
                }
            }
        }
        t
    }

    /// A symlink's real path if it may be followed.
    fn follow(&self, link: &Path) -> Result<PathBuf, String> {
        let target = std::fs::canonicalize(link).map_err(|e| format!("symlink: {e}"))?;
        if target.starts_with(&self.root) {
            Ok(target)
        } else {
            Err(format!(
                "symlink to {} leads outside {}: not followed",
                target.display(),
                self.root.display()
            ))
        }
    }

    /// The directories as they are named.
    pub fn names(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(n, _)| n.clone()).collect()
    }
}

/// The directories whose manifests are read, as named (see [`Tree::walk`];
/// links followed within the pods dir only).
pub fn tree(dir: &Path, recursive: bool) -> Vec<PathBuf> {
    Tree::walk(dir, recursive, None).names()
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

    /// The same, following symlinks beneath `root` (see [`Tree::walk`]).
    pub fn with_link_root(self, root: Option<PathBuf>) -> Self {
        Sources {
            link_root: root,
            ..self
        }
    }

    /// Re-reads the whole directory (start, resync, inotify overflow, a
    /// subdirectory or a symlink made, swapped or removed). A link swapped
    /// while the files are read would mix two revisions, so the tree is
    /// walked again after the reading and, if it changed, read again (at
    /// most three times: a swap is rare, and the watch brings another
    /// resync after it).
    pub fn resync(&mut self, dir: &Path, node: &NodeInfo) {
        let (recursive, link_root) = (self.recursive, self.link_root.clone());
        let walk = || Tree::walk(dir, recursive, link_root.as_deref());
        let mut t = walk();
        for _ in 0..3 {
            self.read_tree(&t, node);
            let after = walk();
            if after == t {
                break;
            }
            t = after;
        }
    }

    fn read_tree(&mut self, t: &Tree, node: &NodeInfo) {
        self.root = t.root.clone();
        let mut seen = std::collections::BTreeSet::new();
        for (named, at) in &t.dirs {
            let Ok(entries) = std::fs::read_dir(at) else {
                continue;
            };
            for e in entries.flatten() {
                let name = named.join(e.file_name());
                let Ok(kind) = e.file_type() else { continue };
                let file = kind.is_file() || (kind.is_symlink() && !e.path().is_dir());
                if is_manifest_name(&name) && file {
                    self.read(&name, &e.path(), node);
                    seen.insert(name);
                }
            }
        }
        // A refused link keeps what was read through it before (its files'
        // last good pods), as a file that cannot be read keeps its own.
        for (link, why) in &t.refused {
            seen.extend(self.files.keys().filter(|p| p.starts_with(link)).cloned());
            let entry = FileState {
                good: Vec::new(),
                diagnostics: vec![problem(link, why.clone())],
            };
            self.files.insert(link.clone(), entry);
            seen.insert(link.clone());
        }
        self.files.retain(|p, _| seen.contains(p));
    }

    /// Reads one file again (it was written or moved into place), or forgets
    /// it (it was removed or renamed away).
    pub fn refresh(&mut self, path: &Path, node: &NodeInfo) {
        if !is_manifest_name(path) {
            return;
        }
        if std::fs::symlink_metadata(path).is_ok() && !path.is_dir() {
            self.read(path, path, node);
        } else {
            self.files.remove(path);
        }
    }

    /// The file known as `named`, read at `at`; a symlink only when it
    /// leads beneath the root.
    fn read(&mut self, named: &Path, at: &Path, node: &NodeInfo) {
        let mut entry = self.files.remove(named).unwrap_or_default();
        match std::fs::canonicalize(at) {
            Ok(real) if real.starts_with(&self.root) => {
                entry = read_file_at(named, &real, node, entry);
            }
            Ok(real) => {
                let why = format!(
                    "symlink to {} leads outside {}: not followed",
                    real.display(),
                    self.root.display()
                );
                entry.diagnostics = vec![problem(named, why)];
            }
            Err(e) => entry.diagnostics = vec![problem(named, format!("cannot read: {e}"))],
        }
        self.files.insert(named.to_path_buf(), entry);
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
pub fn read_file(path: &Path, node: &NodeInfo, entry: FileState) -> FileState {
    read_file_at(path, path, node, entry)
}

/// [`read_file`] of the file named `name`, read at `at`.
fn read_file_at(name: &Path, at: &Path, node: &NodeInfo, mut entry: FileState) -> FileState {
    let bytes = match std::fs::metadata(at) {
        Ok(m) if m.len() > MAX_FILE => Err(format!(
            "file is {} bytes: at most {MAX_FILE} allowed",
            m.len()
        )),
        _ => std::fs::read(at).map_err(|e| format!("cannot read: {e}")),
    };
    match bytes {
        Ok(b) => {
            let report = specs::load(&name.display().to_string(), &b, node);
            if !report.has_errors() {
                entry.good = report.pods;
            }
            entry.diagnostics = report.diagnostics;
        }
        Err(message) => entry.diagnostics = vec![problem(name, message)],
    }
    entry
}

/// An error of a whole file (or link).
fn problem(file: &Path, message: String) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.display().to_string(),
        line: None,
        column: None,
        path: String::new(),
        message,
    }
}

/// The file events the pods dir is watched for: a write finished, a rename
/// into or out of place, a removal, a creation (a symlink made by `ln -s`
/// comes as that alone; a directory made, with `recursive`, as that with
/// `IN_ISDIR`).
fn watch_flags() -> AddWatchFlags {
    AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_CREATE
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

/// inotify on the pods dir and, with `recursive`, on each directory of its
/// [`Tree`] (through the links it follows), kept in step as directories and
/// links come, go and are swapped. When the pods dir is itself a symlink,
/// its parent is watched for the link's name too, so a swap of the pods
/// dir is seen.
#[derive(Debug)]
pub struct DirWatch {
    ino: Inotify,
    root: PathBuf,
    recursive: bool,
    link_root: Option<PathBuf>,
    /// Each watched directory as it is named below the pods dir.
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// The pods dir's parent and the link's name in it.
    parent: Option<(WatchDescriptor, std::ffi::OsString)>,
}

impl DirWatch {
    pub fn new(root: &Path, recursive: bool, link_root: Option<&Path>) -> Result<Self, WatchError> {
        let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(WatchError::Init)?;
        let add = |ino: &Inotify, path: &Path, flags| {
            ino.add_watch(path, flags)
                .map_err(|source| WatchError::Add {
                    path: path.to_path_buf(),
                    source,
                })
        };
        let wd = add(&ino, root, watch_flags())?;
        let is_link = std::fs::symlink_metadata(root).is_ok_and(|m| m.file_type().is_symlink());
        let parent = match (is_link, root.parent(), root.file_name()) {
            (true, Some(dir), Some(name)) => {
                let flags = AddWatchFlags::IN_CREATE
                    | AddWatchFlags::IN_MOVED_TO
                    | AddWatchFlags::IN_MOVED_FROM
                    | AddWatchFlags::IN_DELETE
                    | AddWatchFlags::IN_DONT_FOLLOW;
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                Some((add(&ino, dir, flags)?, name.to_os_string()))
            }
            _ => None,
        };
        let mut w = DirWatch {
            ino,
            root: root.to_path_buf(),
            recursive,
            link_root: link_root.map(Path::to_path_buf),
            dirs: HashMap::from([(wd, root.to_path_buf())]),
            parent,
        };
        w.rewatch();
        Ok(w)
    }

    pub fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.ino.as_fd()
    }

    /// Watches every directory of the tree as it is now, and no other: a
    /// directory reached through a swapped link is a new inode, so a new
    /// descriptor, and the old one goes.
    fn rewatch(&mut self) {
        let t = Tree::walk(&self.root, self.recursive, self.link_root.as_deref());
        let mut now = HashMap::new();
        for (named, at) in &t.dirs {
            if let Ok(wd) = self.ino.add_watch(at, watch_flags()) {
                now.insert(wd, named.clone());
            }
        }
        for wd in self.dirs.keys() {
            if !now.contains_key(wd) {
                let _ = self.ino.rm_watch(*wd);
            }
        }
        self.dirs = now;
    }

    /// The events waiting, read without blocking.
    pub fn changes(&mut self) -> Changes {
        let mut files = Vec::new();
        let mut resync = false;
        for ev in self.ino.read_events().unwrap_or_default() {
            let parent = self.parent.as_ref().filter(|(wd, _)| *wd == ev.wd);
            if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                resync = true;
            } else if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                self.dirs.remove(&ev.wd);
            } else if let Some((_, link)) = parent {
                // The pods dir's own link, swapped or made again.
                resync |= ev.name.as_ref() == Some(link);
            } else if ev.mask.contains(AddWatchFlags::IN_ISDIR) {
                resync |= self.recursive;
            } else if let (Some(name), Some(dir)) = (ev.name, self.dirs.get(&ev.wd)) {
                let path = dir.join(name);
                let link =
                    std::fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink());
                if is_manifest_name(&path) {
                    // A file made is seen when it is written and closed; a
                    // symlink, when it is made.
                    if !ev.mask.contains(AddWatchFlags::IN_CREATE) || link {
                        files.push(path);
                    }
                } else if self.recursive {
                    // A link to a directory renamed into place (a swap) or
                    // one that was followed, removed. A link just made is
                    // left to the next resync: a tool that publishes by
                    // rename (git-sync's `tmp-link`) makes it under another
                    // name first, and reading that would desire both
                    // revisions for a moment.
                    let made = ev.mask.contains(AddWatchFlags::IN_CREATE);
                    resync |= (link && !made) || self.dirs.values().any(|d| *d == path);
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

    /// How many directories of the tree are watched.
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
    fn subdirectories_are_read_only_when_recursive_never_hidden_and_each_once() {
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
        let mut w = DirWatch::new(root, true, None).unwrap();
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
        let mut flat = DirWatch::new(root, false, None).unwrap();
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

    #[test]
    fn a_swapped_link_is_read_whole_and_a_link_out_of_the_root_refused() {
        let dir = tempfile::tempdir().unwrap();
        let node = NodeInfo::default();
        let top = dir.path().join("pods");
        let revs = top.join(".revs");
        for r in ["1", "2"] {
            std::fs::create_dir_all(revs.join(r)).unwrap();
        }
        std::fs::write(revs.join("1/a.yaml"), pod("a", "x")).unwrap();
        std::fs::write(revs.join("2/b.yaml"), pod("b", "x")).unwrap();
        std::os::unix::fs::symlink(".revs/1", top.join("current")).unwrap();
        let keys = |s: &Sources| s.desired().pods.into_keys().collect::<Vec<_>>();
        let mut s = Sources::new(true);
        s.resync(&top, &node);
        assert_eq!(keys(&s), ["default/a"]);
        assert!(
            s.files.contains_key(&top.join("current/a.yaml")),
            "{:?}",
            s.files.keys()
        );
        // The publishing tools' swap: a link made aside, renamed over.
        std::os::unix::fs::symlink(".revs/2", top.join(".tmp")).unwrap();
        std::fs::rename(top.join(".tmp"), top.join("current")).unwrap();
        s.resync(&top, &node);
        assert_eq!(keys(&s), ["default/b"]);

        // Swapped to a directory outside the root: refused by name, and
        // what was read through it stays.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("c.yaml"), pod("c", "x")).unwrap();
        std::os::unix::fs::symlink(&outside, top.join(".tmp")).unwrap();
        std::fs::rename(top.join(".tmp"), top.join("current")).unwrap();
        s.resync(&top, &node);
        assert_eq!(keys(&s), ["default/b"]);
        let d = &s.files[&top.join("current")].diagnostics;
        assert!(d[0].message.contains("leads outside"), "{d:?}");
        // With the root widened it is followed.
        let mut wide = Sources::new(true).with_link_root(Some(dir.path().to_path_buf()));
        wide.resync(&top, &node);
        assert_eq!(keys(&wide), ["default/c"]);

        // A file link: followed inside the root, refused outside it (the
        // last good pods kept, as for a file that cannot be read).
        std::fs::write(top.join("real.yaml"), pod("real", "x")).unwrap();
        std::os::unix::fs::symlink("real.yaml", top.join("alias.yaml")).unwrap();
        let mut flat = Sources::new(false);
        flat.resync(&top, &node);
        assert!(flat.files[&top.join("alias.yaml")].diagnostics.is_empty());
        std::fs::remove_file(top.join("alias.yaml")).unwrap();
        std::os::unix::fs::symlink(outside.join("c.yaml"), top.join("alias.yaml")).unwrap();
        flat.refresh(&top.join("alias.yaml"), &node);
        let f = &flat.files[&top.join("alias.yaml")];
        assert_eq!(f.good.len(), 1, "the last good version stays");
        assert_eq!(f.good[0].name.as_str(), "real");
        assert!(f.diagnostics[0].message.contains("leads outside"), "{f:?}");
    }

    #[test]
    fn the_watch_sees_a_link_swapped_and_the_pods_dir_itself_swapped() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("pods");
        for r in ["pods/.revs/1", "pods/.revs/2", "r1", "r2"] {
            std::fs::create_dir_all(dir.path().join(r)).unwrap();
        }
        std::os::unix::fs::symlink(".revs/1", top.join("current")).unwrap();
        let mut w = DirWatch::new(&top, true, None).unwrap();
        assert_eq!(w.watched(), 2);
        // A link made in place waits for the next resync (a publisher's
        // link made aside must not be read).
        std::os::unix::fs::symlink(".revs/2", top.join("tmp-link")).unwrap();
        assert_eq!(w.changes(), Changes::Files(vec![]));
        std::fs::rename(top.join("tmp-link"), top.join("current")).unwrap();
        assert_eq!(w.changes(), Changes::Resync);
        assert_eq!(w.watched(), 2);
        // The new revision's directory is the one watched.
        std::fs::write(top.join(".revs/2/p.yaml"), "x").unwrap();
        assert_eq!(
            w.changes(),
            Changes::Files(vec![top.join("current/p.yaml")])
        );
        std::fs::write(top.join(".revs/1/q.yaml"), "x").unwrap();
        assert_eq!(w.changes(), Changes::Files(vec![]));
        std::fs::remove_file(top.join("current")).unwrap();
        assert_eq!(w.changes(), Changes::Resync);
        assert_eq!(w.watched(), 1);

        // The pods dir itself a link, swapped.
        let link = dir.path().join("node");
        std::os::unix::fs::symlink("r1", &link).unwrap();
        let mut w = DirWatch::new(&link, false, None).unwrap();
        std::os::unix::fs::symlink("r2", dir.path().join("node.tmp")).unwrap();
        std::fs::rename(dir.path().join("node.tmp"), &link).unwrap();
        assert_eq!(w.changes(), Changes::Resync);
        std::fs::write(dir.path().join("r2/p.yaml"), "x").unwrap();
        assert_eq!(w.changes(), Changes::Files(vec![link.join("p.yaml")]));
        std::fs::write(dir.path().join("r1/p.yaml"), "x").unwrap();
        assert_eq!(w.changes(), Changes::Files(vec![]));
    }
}
