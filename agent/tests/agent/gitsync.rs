//! `--git-repo`: a node follows a real git repository (a bare one on disk
//! the test commits to, served by `git daemon` on the test node's
//! loopback): a commit applied within
//! the interval; a bad commit refused with the node unchanged; a commit
//! whose pod crash-loops reverted within the health window while the
//! healthy pod keeps its process; a force-push back applied; the fleet
//! layout (its own `nodes/<name>/`, not another node's); the state shown by
//! `podctl sync status` and the metrics. A node with allowed signers
//! applies a signed commit and refuses an unsigned one.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

fn git(dir: &Path, args: &[&str]) -> String {
    let o = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@example.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn pod(name: &str, command: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: c\n    image: busybox\n    command: [{command}]\n"
    )
}

/// Writes `files` (path, text; an empty text removes the file) in the
/// work tree, commits and pushes: the new commit.
fn commit(work: &Path, files: &[(&str, &str)], message: &str) -> String {
    commit_with(work, files, message, &[])
}

/// [`commit`] with git options before `commit` (a signing key).
fn commit_with(work: &Path, files: &[(&str, &str)], message: &str, options: &[&str]) -> String {
    for (path, text) in files {
        let p = work.join(path);
        if text.is_empty() {
            let _ = std::fs::remove_file(&p);
        } else {
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(&p, text).unwrap();
        }
    }
    git(work, &["add", "-A"]);
    let mut args = options.to_vec();
    args.extend(["commit", "--quiet", "-m", message]);
    git(work, &args);
    git(work, &["push", "--quiet", "--force", "origin", "HEAD:main"]);
    git(work, &["rev-parse", "HEAD"])
}

/// The port `git daemon` listens on, on the test node's loopback.
const PORT: u16 = 19418;

/// `git daemon` serving the repositories below a directory, stopped when
/// dropped.
struct Daemon(std::process::Child);

impl Daemon {
    fn serve(base: &Path) -> Daemon {
        let child = Command::new("git")
            .args([
                "daemon",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={PORT}"))
            .arg(format!("--base-path={}", base.display()))
            .arg(base)
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let up = eventually(Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", PORT)).is_ok()
        });
        assert!(up, "git daemon does not listen");
        Daemon(child)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_node_follows_its_repository_refuses_bad_commits_and_reverts_unhealthy_ones() {
    if !require() {
        return;
    }
    let have_git = Command::new("git").arg("--version").output().is_ok();
    if !have_git {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "git is missing: run scripts/setup"
        );
        return;
    }
    on_private_node(|| {
        let fx = fixture("gitsync");
        let (pods, state, state_s) = fx.agent_dirs();
        let remote = fx.dir.path().join("remote.git");
        let work = fx.dir.path().join("work");
        git(
            fx.dir.path(),
            &["init", "--quiet", "--bare", remote.to_str().unwrap()],
        );
        git(fx.dir.path(), &["init", "--quiet", work.to_str().unwrap()]);
        git(
            &work,
            &["remote", "add", "origin", remote.to_str().unwrap()],
        );
        let sleeper = "sleep, '100000'";
        let first = commit(
            &work,
            &[
                ("edge/stable.yaml", &pod("stable", sleeper)),
                ("edge/nodes/n1/mine.yaml", &pod("mine", sleeper)),
                ("edge/nodes/n2/theirs.yaml", &pod("theirs", sleeper)),
                ("README.md", "not read: outside --git-path\n"),
            ],
            "first",
        );
        let _daemon = Daemon::serve(fx.dir.path());
        let url = format!("git://127.0.0.1:{PORT}/remote.git");
        let extra = [
            "--no-network",
            "--git-repo",
            &url,
            "--git-path",
            "edge",
            "--node-name",
            "n1",
            "--git-interval",
            "1",
            "--health-window",
            "6",
        ];
        let _agent = Running(spawn_agent(&fx, &pods, &state, &extra));
        let sync = || -> serde_json::Value {
            let out = podctl(&["sync", "status", "-o", "json", "--state-dir", &state_s]).1;
            serde_json::from_str(&out).unwrap_or_default()
        };
        let running = |name: &str| pod_status(&state_s, name)["phase"] == "Running";
        assert!(
            eventually(Duration::from_secs(30), || running("stable")
                && running("mine")
                && sync()["healthy"] == first.as_str()),
            "{:#} {}",
            sync(),
            podctl(&["status", "--state-dir", &state_s]).1
        );
        assert!(
            pod_status(&state_s, "theirs").is_null(),
            "another node's pod"
        );
        let pid = |name: &str| {
            pod_status(&state_s, name)["containers"][0]["started_at"]
                .as_str()
                .unwrap_or("")
                .to_string()
        };
        let stable_started = pid("stable");

        // A bad file refuses the whole commit: nothing of it is applied.
        let bad = commit(
            &work,
            &[
                ("edge/new.yaml", &pod("new", sleeper)),
                (
                    "edge/broken.yaml",
                    &pod("broken", sleeper).replace("busybox", "BAD IMAGE"),
                ),
            ],
            "bad",
        );
        assert!(
            eventually(Duration::from_secs(20), || sync()["bad_commits"]
                .as_array()
                .is_some_and(|b| b.iter().any(|c| c == bad.as_str()))),
            "{:#}",
            sync()
        );
        let s = sync();
        assert_eq!(s["applied"], first.as_str(), "{s:#}");
        assert!(
            s["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("broken.yaml"),
            "{s:#}"
        );
        assert!(
            pod_status(&state_s, "new").is_null(),
            "no pod of a refused commit"
        );

        // A commit whose new pod crash-loops: applied, then reverted.
        let crashing = commit(
            &work,
            &[
                ("edge/broken.yaml", ""),
                ("edge/new.yaml", ""),
                ("edge/crash.yaml", &pod("crash", "'false'")),
            ],
            "crashing",
        );
        assert!(
            eventually(Duration::from_secs(20), || !pod_status(&state_s, "crash")
                .is_null()),
            "{:#}",
            sync()
        );
        assert!(
            eventually(Duration::from_secs(30), || {
                let s = sync();
                s["applied"] == first.as_str()
                    && s["bad_commits"]
                        .as_array()
                        .is_some_and(|b| b.iter().any(|c| c == crashing.as_str()))
            }),
            "{:#}",
            sync()
        );
        assert!(
            eventually(Duration::from_secs(20), || pod_status(&state_s, "crash")
                .is_null()),
            "the crashing pod is gone with the revert"
        );
        let events = podctl(&["events", "--state-dir", &state_s]).1;
        for reason in ["Applied", "Refused", "Unhealthy", "Reverted", "Healthy"] {
            assert!(events.contains(reason), "{reason}: {events}");
        }
        assert_eq!(pid("stable"), stable_started, "the healthy pod untouched");
        // Not tried again while the branch stays.
        assert!(!eventually(Duration::from_secs(3), || !pod_status(
            &state_s, "crash"
        )
        .is_null()));

        // The branch force-pushed back to an older commit without `mine`.
        git(&work, &["reset", "--quiet", "--hard", &first]);
        let older = commit(&work, &[("edge/nodes/n1/mine.yaml", "")], "without mine");
        assert!(
            eventually(Duration::from_secs(30), || sync()["healthy"]
                == older.as_str()
                && pod_status(&state_s, "mine").is_null()),
            "{:#}",
            sync()
        );
        git(&work, &["reset", "--quiet", "--hard", &first]);
        git(
            &work,
            &["push", "--quiet", "--force", "origin", "HEAD:main"],
        );
        let (code, out, err) = podctl(&["sync", "now", "--state-dir", &state_s]);
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            eventually(Duration::from_secs(30), || sync()["healthy"]
                == first.as_str()
                && running("mine")),
            "{:#}",
            sync()
        );
        assert_eq!(pid("stable"), stable_started, "the healthy pod untouched");
        let (_, text, _) = podctl(&["sync", "status", "--state-dir", &state_s]);
        assert!(text.contains(&format!("Healthy:     {first}")), "{text}");
        assert!(text.contains(&crashing), "{text}");

        let (code, body) = agent::api::get(&state.join("podagent.sock"), "/metrics").unwrap();
        assert_eq!(code, 200);
        let metrics = String::from_utf8(body).unwrap();
        let repo = format!("repository=\"{url}\",ref=\"main\"");
        for line in [
            format!(
                "podagent_sync_revision_info{{{repo},state=\"applied\",revision=\"{first}\"}} 1"
            ),
            format!("podagent_sync_refused_total{{{repo}}} 1"),
            format!("podagent_sync_reverted_total{{{repo}}} 1"),
            format!("podagent_sync_bad_commits{{{repo}}} 2"),
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line}: {metrics}");
        }
        let rollout = metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("podagent_sync_rollout_seconds{{{repo}}} ")))
            .and_then(|v| v.parse::<f64>().ok());
        assert!(rollout.is_some_and(|s| s > 0.0 && s < 30.0), "{metrics}");
    });
}

#[test]
fn a_node_with_allowed_signers_applies_signed_commits_only() {
    if !require() {
        return;
    }
    let have = |tool: &str| Command::new(tool).arg("--version").output().is_ok();
    if !have("git") || !have("ssh-keygen") {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "git or ssh-keygen is missing: run scripts/setup"
        );
        return;
    }
    on_private_node(|| {
        let fx = fixture("gitsign");
        let (pods, state, state_s) = fx.agent_dirs();
        let remote = fx.dir.path().join("remote.git");
        let work = fx.dir.path().join("work");
        git(
            fx.dir.path(),
            &["init", "--quiet", "--bare", remote.to_str().unwrap()],
        );
        git(fx.dir.path(), &["init", "--quiet", work.to_str().unwrap()]);
        git(
            &work,
            &["remote", "add", "origin", remote.to_str().unwrap()],
        );
        let key = fx.dir.path().join("deploy");
        let o = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "release", "-f"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let signers = fx.dir.path().join("allowed_signers");
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        std::fs::write(&signers, format!("release@example.invalid {public}")).unwrap();
        let signing = format!("user.signingkey={}", key.display());
        let sign = [
            "-c",
            "gpg.format=ssh",
            "-c",
            &signing,
            "-c",
            "commit.gpgsign=true",
        ];
        let sleeper = "sleep, '100000'";
        let signed = commit_with(
            &work,
            &[("signed.yaml", &pod("signed", sleeper))],
            "signed",
            &sign,
        );
        let url = format!("file://{}", remote.display());
        let extra = [
            "--no-network",
            "--git-repo",
            &url,
            "--git-interval",
            "1",
            "--health-window",
            "3",
            "--git-allowed-signers",
            signers.to_str().unwrap(),
        ];
        let _agent = Running(spawn_agent(&fx, &pods, &state, &extra));
        let sync = || -> serde_json::Value {
            let out = podctl(&["sync", "status", "-o", "json", "--state-dir", &state_s]).1;
            serde_json::from_str(&out).unwrap_or_default()
        };
        assert!(
            eventually(Duration::from_secs(30), || sync()["healthy"]
                == signed.as_str()
                && pod_status(&state_s, "signed")["phase"] == "Running"),
            "{:#}",
            sync()
        );
        let unsigned = commit(
            &work,
            &[("unsigned.yaml", &pod("unsigned", sleeper))],
            "unsigned",
        );
        assert!(
            eventually(Duration::from_secs(20), || sync()["bad_commits"]
                .as_array()
                .is_some_and(|b| b.iter().any(|c| c == unsigned.as_str()))),
            "{:#}",
            sync()
        );
        let s = sync();
        assert_eq!(s["applied"], signed.as_str(), "{s:#}");
        assert!(
            s["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("not signed"),
            "{s:#}"
        );
        assert!(pod_status(&state_s, "unsigned").is_null());
        assert_eq!(pod_status(&state_s, "signed")["phase"], "Running");
    });
}
