//! A git repository as a source of pods (`podagent run --git-repo`): its
//! revisions fetched with the `git` command into a bare mirror under the
//! root dir, each commit unpacked into a directory of its own
//! (`<root-dir>/git/revs/<commit>`) and checked whole before the loop
//! applies it as one change (see `daemon::sync`).
//!
//! The `git` command rather than a library (gix): it speaks every transport
//! and credential a node is set up with (https with the system's CAs and
//! credential helpers, ssh with a deploy key in `~/.ssh` or
//! `GIT_SSH_COMMAND`, `file://`), and `git verify-commit` is the reference
//! for signatures; gix's network and checkout features are a long build
//! on a 2-core machine for what a fetch every minute needs.
//!
//! A revision is unpacked from `git archive` (a tar stream read with the
//! `tar` crate), so nothing git would do to a work tree (hooks, filters,
//! attributes) runs, and every entry is checked on the way: a revision is
//! refused whole when it has a submodule, a symlink that leads outside the
//! checkout, a file over the loader's size bound or more than `MAX_FILES`
//! files. Fleet layout: the node reads its path (`--git-path`, default the
//! top) without `nodes/`, and `nodes/<node-name>/` below it: one repository
//! serves many nodes.

use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

/// At most this many files in the part of a revision a node reads.
pub const MAX_FILES: usize = 2000;

/// A repository as the node follows it.
#[derive(Debug, Clone)]
pub struct Repo {
    pub url: String,
    /// A branch or tag.
    pub git_ref: String,
    /// The directory of the repository the node reads ("" for the top).
    pub path: String,
    pub node_name: String,
    /// `<root-dir>/git`: the mirror, the revisions, the sync's record.
    pub dir: PathBuf,
    /// Only commits signed by a key of this allowed-signers file are
    /// applied (`--git-allowed-signers`).
    pub allowed_signers: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("git {what}: {message}")]
    Git { what: String, message: String },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("commit {commit}: {message}")]
    Refused { commit: String, message: String },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SyncError + '_ {
    move |source| SyncError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// A URL with any password in it replaced, for logs and status.
pub fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => match rest.split_once('@') {
            Some((userinfo, host)) if !userinfo.contains('/') => {
                let user = userinfo.split(':').next().unwrap_or("");
                format!("{scheme}://{user}:***@{host}")
            }
            _ => url.to_string(),
        },
        None => url.to_string(),
    }
}

impl Repo {
    fn mirror(&self) -> PathBuf {
        self.dir.join("repo.git")
    }

    /// The directory a commit is unpacked into.
    pub fn rev_dir(&self, commit: &str) -> PathBuf {
        self.dir.join("revs").join(commit)
    }

    /// What the node reads of an unpacked revision: only its path was
    /// unpacked, at the top.
    pub fn pods_dir(&self, commit: &str) -> PathBuf {
        self.rev_dir(commit)
    }

    /// Runs git on the mirror; its stdout, or its stderr's last line as
    /// the error (the URL's password never in it).
    fn git(&self, args: &[&str]) -> Result<Vec<u8>, SyncError> {
        let what = args.first().copied().unwrap_or("").to_string();
        let o = Command::new("git")
            .arg("--git-dir")
            .arg(self.mirror())
            .args(args)
            // Never ask a person for a password.
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_ASKPASS", "/bin/false")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| SyncError::Git {
                what: what.clone(),
                message: format!("cannot run git: {e}"),
            })?;
        if !o.status.success() {
            let err = String::from_utf8_lossy(&o.stderr);
            let line = err
                .lines()
                .rfind(|l| !l.trim().is_empty())
                .unwrap_or("failed");
            return Err(SyncError::Git {
                what,
                message: line.replace(&self.url, &redact(&self.url)),
            });
        }
        Ok(o.stdout)
    }

    /// Fetches the ref: the commit it names now.
    pub fn fetch(&self) -> Result<String, SyncError> {
        let mirror = self.mirror();
        if !mirror.join("HEAD").exists() {
            std::fs::create_dir_all(&mirror).map_err(io(&mirror))?;
            self.git(&["init", "--bare", "--quiet"])?;
        }
        let refspec = format!("+{}:refs/podagent/fetched", self.git_ref);
        self.git(&[
            "fetch",
            "--quiet",
            "--no-tags",
            "--no-recurse-submodules",
            &self.url,
            &refspec,
        ])?;
        let out = self.git(&["rev-parse", "--verify", "refs/podagent/fetched^{commit}"])?;
        Ok(String::from_utf8_lossy(&out).trim().to_string())
    }

    /// Whether `rel` (a path of the repository) is one the node reads:
    /// below its path, and below `nodes/` only in its own directory.
    fn wanted(&self, rel: &Path) -> Option<PathBuf> {
        let inner = if self.path.is_empty() {
            rel.to_path_buf()
        } else {
            rel.strip_prefix(&self.path).ok()?.to_path_buf()
        };
        let mut parts = inner.components();
        match parts.next() {
            Some(Component::Normal(n)) if n == "nodes" => match parts.next() {
                Some(Component::Normal(node)) if node == self.node_name.as_str() => {}
                None => {}
                _ => return None,
            },
            _ => {}
        }
        Some(inner)
    }

    /// Unpacks `commit` into its own directory (once: a directory already
    /// there is complete, as it is renamed into place only when it is).
    pub fn checkout(&self, commit: &str) -> Result<PathBuf, SyncError> {
        if commit.is_empty() || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(SyncError::Refused {
                commit: commit.into(),
                message: "not a commit id".into(),
            });
        }
        let refused = |message: String| SyncError::Refused {
            commit: commit.to_string(),
            message,
        };
        // Checked every time, an unpacked revision included: the signers
        // may have changed since it was unpacked.
        self.verify(commit, &refused)?;
        let dir = self.rev_dir(commit);
        if dir.is_dir() {
            return Ok(dir);
        }
        let mut scope: Vec<String> = Vec::new();
        if !self.path.is_empty() {
            scope.push(self.path.clone());
        }
        let mut ls = vec!["ls-tree", "-r", "-z", commit];
        ls.extend(scope.iter().map(String::as_str));
        let listing = self.git(&ls)?;
        for entry in listing.split(|b| *b == 0).filter(|e| !e.is_empty()) {
            let text = String::from_utf8_lossy(entry);
            if text.starts_with("160000 ") {
                let path = text.split_once('\t').map_or("", |(_, p)| p);
                return Err(refused(format!("{path}: a submodule (not followed)")));
            }
        }
        let revs = self.dir.join("revs");
        std::fs::create_dir_all(&revs).map_err(io(&revs))?;
        let tmp = revs.join(format!(".{commit}.tmp"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let result = self.unpack(commit, &scope, &tmp);
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
        Ok(dir)
    }

    /// With allowed signers: the commit carries an SSH signature that
    /// `git verify-commit` accepts against the file. A missing or
    /// unreadable file is the node's fault, not the commit's: an error
    /// tried again, so no commit is marked bad for it.
    fn verify(&self, commit: &str, refused: &dyn Fn(String) -> SyncError) -> Result<(), SyncError> {
        let Some(signers) = &self.allowed_signers else {
            return Ok(());
        };
        std::fs::File::open(signers).map_err(io(signers))?;
        let raw = self.git(&["cat-file", "commit", commit])?;
        let text = String::from_utf8_lossy(&raw);
        let header = text.split("\n\n").next().unwrap_or("");
        let signature = header
            .lines()
            .find_map(|l| l.strip_prefix("gpgsig "))
            .map(str::trim);
        match signature {
            None => {
                return Err(refused(
                    "not signed: this node applies signed commits only".into(),
                ))
            }
            Some("-----BEGIN SSH SIGNATURE-----") => {}
            Some(_) => return Err(refused(
                "not an SSH signature: this node checks SSH signatures against its allowed signers"
                    .into(),
            )),
        }
        let file = format!("gpg.ssh.allowedSignersFile={}", signers.display());
        self.git(&["-c", &file, "verify-commit", commit])
            .map_err(|e| match e {
                SyncError::Git { message, .. } => {
                    refused(format!("signature not accepted: {message}"))
                }
                e => e,
            })?;
        Ok(())
    }

    fn unpack(&self, commit: &str, scope: &[String], into: &Path) -> Result<(), SyncError> {
        let refused = |message: String| SyncError::Refused {
            commit: commit.to_string(),
            message,
        };
        let mut child = Command::new("git")
            .arg("--git-dir")
            .arg(self.mirror())
            .args(["archive", "--format=tar", commit])
            .args(scope)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| SyncError::Git {
                what: "archive".into(),
                message: format!("cannot run git: {e}"),
            })?;
        let mut stdout = child.stdout.take().ok_or_else(|| SyncError::Git {
            what: "archive".into(),
            message: "no output".into(),
        })?;
        let outcome = self.entries(&mut stdout, into, &refused);
        if outcome.is_err() {
            let _ = child.kill();
        } else {
            // What follows the archive's end marker (padding) is read, so
            // git exits on its own.
            let _ = std::io::copy(&mut stdout, &mut std::io::sink());
        }
        drop(stdout);
        let status = child.wait();
        outcome?;
        if !status.is_ok_and(|s| s.success()) {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            return Err(SyncError::Git {
                what: "archive".into(),
                message: err.trim().to_string(),
            });
        }
        Ok(())
    }

    fn entries(
        &self,
        stream: impl Read,
        into: &Path,
        refused: &dyn Fn(String) -> SyncError,
    ) -> Result<(), SyncError> {
        let mut archive = tar::Archive::new(stream);
        let mut files = 0usize;
        let entries = archive
            .entries()
            .map_err(|e| refused(format!("archive: {e}")))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| refused(format!("archive: {e}")))?;
            let rel = entry
                .path()
                .map_err(|e| refused(format!("archive: {e}")))?
                .into_owned();
            if rel.is_absolute() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
                return Err(refused(format!(
                    "{}: not a path inside the tree",
                    rel.display()
                )));
            }
            let kind = entry.header().entry_type();
            // pax headers (git's commit id comment) carry no file.
            if kind.is_pax_global_extensions() || kind.is_pax_local_extensions() {
                continue;
            }
            let Some(inner) = self.wanted(&rel) else {
                continue;
            };
            let target = into.join(&inner);
            if kind.is_dir() {
                std::fs::create_dir_all(&target).map_err(io(&target))?;
                continue;
            }
            files += 1;
            if files > MAX_FILES {
                return Err(refused(format!(
                    "more than {MAX_FILES} files under {}",
                    if self.path.is_empty() {
                        "the top"
                    } else {
                        &self.path
                    }
                )));
            }
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent).map_err(io(parent))?;
            }
            if kind.is_symlink() {
                let link = entry
                    .link_name()
                    .map_err(|e| refused(format!("archive: {e}")))?
                    .unwrap_or_default()
                    .into_owned();
                if !stays_inside(&inner, &link) {
                    return Err(refused(format!(
                        "{}: a symlink to {} leads outside the checkout",
                        rel.display(),
                        link.display()
                    )));
                }
                std::os::unix::fs::symlink(&link, &target).map_err(io(&target))?;
                continue;
            }
            if !kind.is_file() {
                return Err(refused(format!("{}: not a file", rel.display())));
            }
            let size = entry.header().size().unwrap_or(u64::MAX);
            if size > specs::load::MAX_MANIFEST_BYTES as u64 {
                return Err(refused(format!(
                    "{}: {size} bytes, over the loader's bound of {}",
                    rel.display(),
                    specs::load::MAX_MANIFEST_BYTES
                )));
            }
            let mut f = std::fs::File::create(&target).map_err(io(&target))?;
            std::io::copy(&mut entry, &mut f).map_err(io(&target))?;
        }
        Ok(())
    }

    /// Removes unpacked revisions but those in `keep`.
    pub fn prune(&self, keep: &[&str]) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("revs")) else {
            return;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !keep.contains(&name.as_str()) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
}

/// Whether a symlink at `at` (relative to the checkout) to `link` resolves
/// inside the checkout, lexically.
fn stays_inside(at: &Path, link: &Path) -> bool {
    if link.is_absolute() {
        return false;
    }
    let mut depth: i64 = at.components().count() as i64 - 1;
    for c in link.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn symlinks_must_stay_inside() {
        assert!(stays_inside(Path::new("a/b.yaml"), Path::new("c.yaml")));
        assert!(stays_inside(Path::new("a/b.yaml"), Path::new("../c.yaml")));
        assert!(!stays_inside(
            Path::new("a/b.yaml"),
            Path::new("../../etc/passwd")
        ));
        assert!(!stays_inside(Path::new("b.yaml"), Path::new("/etc/passwd")));
        assert!(!stays_inside(Path::new("b.yaml"), Path::new("../x")));
    }

    #[test]
    fn passwords_never_show() {
        assert_eq!(
            redact("https://bot:s3cret@git.example/x.git"),
            "https://bot:***@git.example/x.git"
        );
        assert_eq!(redact("file:///srv/x.git"), "file:///srv/x.git");
        assert_eq!(redact("git@host:x.git"), "git@host:x.git");
    }

    #[test]
    fn a_node_reads_its_path_and_its_own_nodes_directory() {
        let repo = Repo {
            url: String::new(),
            git_ref: "main".into(),
            path: "edge".into(),
            node_name: "n1".into(),
            dir: PathBuf::new(),
            allowed_signers: None,
        };
        let w = |p: &str| repo.wanted(Path::new(p));
        assert_eq!(w("edge/app.yaml"), Some(PathBuf::from("app.yaml")));
        assert_eq!(
            w("edge/nodes/n1/x.yaml"),
            Some(PathBuf::from("nodes/n1/x.yaml"))
        );
        assert_eq!(w("edge/nodes/n2/x.yaml"), None);
        assert_eq!(w("other/app.yaml"), None);
    }

    /// Runs git in `dir` as a person committing would, or nothing when git
    /// is missing outside CI.
    fn git_in(dir: &Path, args: &[&str]) -> String {
        let o = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args([
                "-c",
                "init.defaultBranch=main",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .expect("git");
        assert!(
            o.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    fn have(tool: &str) -> bool {
        let ok = Command::new(tool)
            .arg("--version")
            .stderr(Stdio::null())
            .output()
            .is_ok();
        assert!(
            ok || std::env::var("CI").as_deref() != Ok("true"),
            "{tool} is missing: run scripts/setup"
        );
        ok
    }

    /// A work repository with a first commit, and a node's `Repo` on it.
    fn repository(dir: &Path) -> (PathBuf, Repo) {
        let work = dir.join("work");
        std::fs::create_dir_all(&work).unwrap();
        git_in(&work, &["init", "--quiet"]);
        std::fs::write(work.join("app.yaml"), "kind: Pod\n").unwrap();
        git_in(&work, &["add", "-A"]);
        git_in(&work, &["commit", "--quiet", "-m", "first"]);
        let repo = Repo {
            url: format!("file://{}", work.display()),
            git_ref: "main".into(),
            path: String::new(),
            node_name: "n1".into(),
            dir: dir.join("node"),
            allowed_signers: None,
        };
        (work, repo)
    }

    fn refusal(repo: &Repo) -> String {
        let commit = repo.fetch().unwrap();
        match repo.checkout(&commit) {
            Err(SyncError::Refused { message, .. }) => message,
            other => panic!("not refused: {other:?}"),
        }
    }

    #[test]
    fn a_bad_tree_is_refused_whole() {
        if !have("git") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (work, repo) = repository(tmp.path());
        let good = repo.fetch().unwrap();
        let dir = repo.checkout(&good).unwrap();
        assert!(dir.join("app.yaml").is_file());
        let first = good.as_str();
        let commit = |what: &str| {
            git_in(&work, &["add", "-A"]);
            git_in(&work, &["commit", "--quiet", "-m", what]);
        };
        let back = || git_in(&work, &["reset", "--quiet", "--hard", first]);

        std::os::unix::fs::symlink("../../../etc/passwd", work.join("evil.yaml")).unwrap();
        commit("a link out");
        let m = refusal(&repo);
        assert!(
            m.contains("evil.yaml: a symlink to ../../../etc/passwd leads outside"),
            "{m}"
        );
        back();

        let big = vec![b'#'; specs::load::MAX_MANIFEST_BYTES + 1];
        std::fs::write(work.join("big.yaml"), big).unwrap();
        commit("too big");
        assert!(refusal(&repo).contains("big.yaml: 1048577 bytes, over the loader's bound"));
        back();

        std::fs::create_dir(work.join("many")).unwrap();
        for i in 0..MAX_FILES {
            std::fs::write(work.join(format!("many/{i}.yaml")), "").unwrap();
        }
        commit("too many");
        assert!(refusal(&repo).contains("more than 2000 files under the top"));
        back();

        git_in(
            &work,
            &[
                "update-index",
                "--add",
                "--cacheinfo",
                &format!("160000,{first},sub"),
            ],
        );
        git_in(&work, &["commit", "--quiet", "-m", "a submodule"]);
        assert!(refusal(&repo).contains("sub: a submodule"));
        back();
        // Nothing of a refused revision is left; the good one still reads.
        assert_eq!(
            std::fs::read_dir(repo.dir.join("revs")).unwrap().count(),
            1,
            "only the good revision is unpacked"
        );
        assert_eq!(repo.fetch().unwrap(), good);
        assert!(repo.checkout(&good).is_ok());
    }

    #[test]
    fn only_commits_signed_by_an_allowed_key_are_taken() {
        if !have("git") || !have("ssh-keygen") {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (work, mut repo) = repository(tmp.path());
        let key = |name: &str| {
            let path = tmp.path().join(name);
            let o = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
                .arg(&path)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
            path
        };
        let (trusted, other) = (key("trusted"), key("other"));
        let signers = tmp.path().join("allowed_signers");
        let public = std::fs::read_to_string(trusted.with_extension("pub")).unwrap();
        std::fs::write(&signers, format!("t@example.invalid {public}")).unwrap();
        repo.allowed_signers = Some(tmp.path().join("missing"));
        let unsigned = repo.fetch().unwrap();
        assert!(
            matches!(repo.checkout(&unsigned), Err(SyncError::Io { .. })),
            "a node without its signers file refuses no commit for it"
        );
        repo.allowed_signers = Some(signers);
        let m = refusal(&repo);
        assert!(m.contains("not signed"), "{m}");
        let sign = |with: &Path, what: &str| {
            std::fs::write(work.join(format!("{what}.yaml")), what).unwrap();
            git_in(&work, &["add", "-A"]);
            let key = format!("user.signingkey={}", with.display());
            git_in(
                &work,
                &[
                    "-c",
                    "gpg.format=ssh",
                    "-c",
                    &key,
                    "commit",
                    "--quiet",
                    "-S",
                    "-m",
                    what,
                ],
            );
        };
        sign(&other, "other");
        let m = refusal(&repo);
        assert!(m.contains("signature not accepted"), "{m}");
        sign(&trusted, "trusted");
        let commit = repo.fetch().unwrap();
        let dir = repo.checkout(&commit).unwrap();
        assert!(dir.join("trusted.yaml").is_file());
    }
}
