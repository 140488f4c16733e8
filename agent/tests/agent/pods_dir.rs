//! `--pods-dir-recursive`, and a subdirectory published by a swapped
//! symlink.

use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

/// `--pods-dir-recursive`: a subdirectory made after the start is watched,
/// its pods run; `podctl delete` finds a pod's file there; removing a whole
/// subdirectory removes its pods; a hidden one is never read.
#[test]
fn with_pods_dir_recursive_subdirectories_are_followed() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("recursive");
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = Running(spawn_agent(
            &fx,
            &pods,
            &state,
            &["--no-network", "--pods-dir-recursive"],
        ));
        let status = || podctl(&["status", "--state-dir", &state_s]).1;
        let running = |name: &str| {
            status()
                .lines()
                .any(|l| l.starts_with(&format!("{name} ")) && l.contains("Running"))
        };
        assert!(eventually(Duration::from_secs(10), || status().starts_with("NAME")));
        let team = pods.join("team-a/web");
        std::fs::create_dir_all(&team).unwrap();
        put_manifest(&team, "a.yaml", &sleeper("deep-a"));
        put_manifest(&team, "b.yaml", &sleeper("deep-b"));
        std::fs::create_dir_all(pods.join(".git")).unwrap();
        put_manifest(&pods.join(".git"), "c.yaml", &sleeper("hidden"));
        assert!(
            eventually(Duration::from_secs(15), || running("deep-a")
                && running("deep-b")),
            "{}",
            status()
        );
        assert!(!status().contains("hidden"));
        let (code, _, err) = podctl(&[
            "delete",
            "--pods-dir",
            &pods.display().to_string(),
            "--pods-dir-recursive",
            "deep-a",
        ]);
        assert_eq!(code, 0, "{err}");
        assert!(!team.join("a.yaml").exists());
        assert!(eventually(Duration::from_secs(15), || !status().contains("deep-a")));
        std::fs::remove_dir_all(pods.join("team-a")).unwrap();
        assert!(
            eventually(Duration::from_secs(15), || !status().contains("deep-b")),
            "{}",
            status()
        );
    });
}

/// Fifty pods published as git-sync publishes a revision: a directory per
/// revision (hidden) and a link swapped by rename. The desired set in every
/// status seen is one revision whole (never both, never neither, never a
/// part of the new one): the swap is one plan. No old pod stops before the
/// swap, and none is left once the new revision is Ready.
#[test]
fn a_symlink_swap_of_fifty_pods_is_one_change() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("swap");
        let (pods, state, state_s) = fx.agent_dirs();
        let names = |rev: &str| -> Vec<String> { (0..50).map(|i| format!("{rev}-{i}")).collect() };
        for rev in ["old", "new"] {
            let dir = pods.join(".revs").join(rev);
            std::fs::create_dir_all(&dir).unwrap();
            for name in names(rev) {
                std::fs::write(dir.join(format!("{name}.yaml")), sleeper(&name)).unwrap();
            }
        }
        std::os::unix::fs::symlink(".revs/old", pods.join("current")).unwrap();
        let _agent = Running(spawn_agent(
            &fx,
            &pods,
            &state,
            &["--no-network", "--pods-dir-recursive"],
        ));
        // Each snapshot: the desired pods (those with a file), by name,
        // and which of them run ready.
        let snapshot = || {
            let mut desired = std::collections::BTreeMap::new();
            let mut leaving = 0;
            for p in raw_status(&state_s)["pods"]
                .as_array()
                .into_iter()
                .flatten()
            {
                let name = p["name"].as_str().unwrap_or("").to_string();
                if p["file"].as_str().unwrap_or("").is_empty() {
                    leaving += 1;
                } else {
                    let ready = p["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True");
                    desired.insert(name, (ready, p["file"].as_str().unwrap_or("").to_string()));
                }
            }
            (desired, leaving)
        };
        let set = |rev: &str| -> Vec<String> {
            let mut v = names(rev);
            v.sort();
            v
        };
        let all_ready = |rev: &str| {
            let (d, _) = snapshot();
            d.keys().cloned().collect::<Vec<_>>() == set(rev) && d.values().all(|(r, _)| *r)
        };
        assert!(
            eventually(Duration::from_secs(60), || all_ready("old")),
            "{:?}",
            snapshot()
        );
        let (d, _) = snapshot();
        assert!(
            d["old-0"].1.ends_with("pods/current/old-0.yaml"),
            "known by the link's name: {d:?}"
        );

        std::os::unix::fs::symlink(".revs/new", pods.join("tmp-link")).unwrap();
        std::fs::rename(pods.join("tmp-link"), pods.join("current")).unwrap();
        let mut seen = Vec::new();
        let done = eventually(Duration::from_secs(60), || {
            let (d, leaving) = snapshot();
            let names: Vec<String> = d.keys().cloned().collect();
            let ready = d.values().all(|(r, _)| *r);
            let finished = names == set("new") && ready;
            seen.push((names, ready, leaving));
            finished
        });
        assert!(done, "{:?}", snapshot());
        for (names, ready, _) in &seen {
            assert!(
                *names == set("old") || *names == set("new"),
                "a desired set of neither revision whole: {names:?}"
            );
            if *names == set("old") {
                assert!(ready, "an old pod stopped before the swap was seen");
            }
        }
        assert!(
            seen.iter().any(|(n, ..)| *n == set("new")),
            "the swap was applied"
        );
        assert!(
            eventually(Duration::from_secs(5), || snapshot().1 == 0),
            "old pods still stopping after the new revision is ready: {:?}",
            snapshot()
        );
    });
}
