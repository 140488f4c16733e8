//! `--pods-dir-recursive`.

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
