//! `--config` and `--log-format json`.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

#[test]
fn a_config_file_sets_options_and_events_can_be_logged_as_json() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("config");
        let (pods, state, state_s) = fx.agent_dirs();
        let cfg = fx.dir.path().join("podagent.yaml");
        std::fs::write(
            &cfg,
            format!(
                "pods-dir: {}\nno-network: true\nlog-format: json\nresync-secs: 30\n",
                pods.display()
            ),
        )
        .unwrap();
        let log = fx.dir.path().join("agent.log");
        let cg = format!("{}/agent", fx.cg_root.as_path().display());
        let mut agent = Running(
            Command::new(env!("CARGO_BIN_EXE_podagent"))
                .args(["run", "--config"])
                .arg(&cfg)
                .arg("--state-dir")
                .arg(&state)
                .arg("--root-dir")
                .arg(fx.dir.path())
                .args(["--cgroup-root", &cg, "--stop-pods-on-exit"])
                .stderr(std::fs::File::create(&log).unwrap())
                .spawn()
                .unwrap(),
        );
        put_manifest(&pods, "s.yaml", &sleeper("s"));
        assert!(
            eventually(Duration::from_secs(15), || podctl(&[
                "status",
                "--state-dir",
                &state_s
            ])
            .1
            .lines()
            .any(|l| l.starts_with("s ") && l.contains("Running"))),
            "{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );

        // Logs through the API: whole, the tail, and followed until the
        // container exits.
        put_manifest(
            &pods,
            "talker.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: talker}\nspec:\n  restartPolicy: Never\n  containers:\n  - {name: t, image: busybox, command: [sh, -c, 'echo one; sleep 1; echo two; sleep 1; echo three']}\n",
        );
        let socket = state.join("podagent.sock");
        assert!(eventually(Duration::from_secs(10), || {
            agent::api::get(&socket, "/v1/logs/default/talker/t")
                .is_ok_and(|(code, body)| code == 200 && body.starts_with(b"one\n"))
        }));
        // `podctl logs -f` streams through the API: the first line comes
        // at once, the last when the container writes it.
        let t = Instant::now();
        let mut follower = Command::new(env!("CARGO_BIN_EXE_podctl"))
            .args(["logs", "-f", "--state-dir", &state_s, "talker"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines =
            std::io::BufRead::lines(std::io::BufReader::new(follower.stdout.take().unwrap()));
        assert_eq!(lines.next().unwrap().unwrap(), "one");
        let first = t.elapsed();
        let rest: Vec<String> = lines.map(Result::unwrap).collect();
        let all = t.elapsed();
        let done = follower.wait_with_output().unwrap();
        assert!(done.status.success());
        assert_eq!(rest, ["two", "three"]);
        assert!(
            first < Duration::from_millis(700) && all >= Duration::from_millis(900),
            "streamed: first line after {first:?}, the rest after {all:?}"
        );
        assert!(
            done.stderr.is_empty(),
            "read through the agent: {}",
            String::from_utf8_lossy(&done.stderr)
        );
        let (code, _, err) = podctl(&["logs", "--state-dir", &state_s, "talkr"]);
        assert_eq!(code, 1);
        assert_eq!(
            err.trim(),
            "podctl logs: pod default/talkr not found; did you mean talker?"
        );
        let (code, body) =
            agent::api::get(&socket, "/v1/logs/default/talker/t?follow=true").unwrap();
        assert_eq!(code, 200);
        assert_eq!(String::from_utf8_lossy(&body), "one\ntwo\nthree\n");
        // A client that leaves a follow of a quiet container: the agent's
        // thread following for it ends within about a second.
        put_manifest(
            &pods,
            "quiet.yaml",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: quiet}\nspec:\n  containers:\n  - {name: q, image: busybox, command: [sh, -c, 'echo hello; exec sleep 1000']}\n",
        );
        assert!(eventually(Duration::from_secs(10), || {
            agent::api::get(&socket, "/v1/logs/default/quiet/q")
                .is_ok_and(|(code, body)| code == 200 && body == b"hello\n")
        }));
        let agent_pid = agent.0.id();
        let followers = || {
            entries(Path::new(&format!("/proc/{agent_pid}/task")))
                .iter()
                .filter(|t| {
                    std::fs::read_to_string(format!("/proc/{agent_pid}/task/{t}/comm"))
                        .is_ok_and(|c| c.trim() == "logs")
                })
                .count()
        };
        let mut while_reading = None;
        agent::api::get_streamed(
            &socket,
            "/v1/logs/default/quiet/q?follow=true",
            &mut |_, _| {
                while_reading = Some(followers());
                false
            },
        )
        .unwrap();
        assert_eq!(while_reading, Some(1), "one thread follows for the client");
        assert!(
            eventually(Duration::from_secs(3), || followers() == 0),
            "the follow thread outlived its client"
        );
        let (_, tail) = agent::api::get(&socket, "/v1/logs/default/talker/t?tail=1").unwrap();
        assert_eq!(String::from_utf8_lossy(&tail), "three\n");
        let (code, body) = agent::api::get(&socket, "/v1/logs/default/talkr/t").unwrap();
        assert_eq!(code, 404);
        assert!(String::from_utf8_lossy(&body).contains("did you mean talker?"));
        assert_eq!(
            agent::api::get(&socket, "/v1/logs/default/talker/t?tail=x")
                .unwrap()
                .0,
            400
        );
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(agent.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        assert!(agent.0.wait().unwrap().success());
        let text = std::fs::read_to_string(&log).unwrap();
        let started = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|e| e["reason"] == "Started")
            .unwrap_or_else(|| panic!("no JSON Started event in:\n{text}"));
        assert_eq!(started["object"], "default/s");
        assert_eq!(started["level"], "info");
        // No address: --no-network came from the file.
        assert!(
            !text.contains("IP 10.88"),
            "the file's no-network was not applied:\n{text}"
        );

        // A key that is no option is refused before anything starts.
        std::fs::write(&cfg, "pods-dirr: /nowhere\n").unwrap();
        let o = Command::new(env!("CARGO_BIN_EXE_podagent"))
            .args(["run", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("pods-dirr: not an option of podagent run"),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        fx.assert_no_mounts();
    });
}
