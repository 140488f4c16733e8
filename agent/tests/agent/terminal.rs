//! `tty: true` and `stdin: true`: a pty of the container's own as its
//! terminal, and a stdin that stays open.

use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

#[test]
fn tty_gives_a_terminal_and_stdin_stays_open() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("terminal");
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = Running(spawn_agent(&fx, &pods, &state, &[]));
        let events = || podctl(&["events", "--state-dir", &state_s]).1;
        let logs = |c: &str| podctl(&["logs", "term", "-c", c, "--state-dir", &state_s]).1;
        put_manifest(
            &pods,
            "term.yaml",
            "apiVersion: v1
kind: Pod
metadata: {name: term}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: shell
    image: busybox
    tty: true
    stdin: true
    command: [sh, -c, 'tty; [ -t 0 ] && [ -t 1 ] && echo all-a-terminal; stty size; exec sh']
  - name: reader
    image: busybox
    stdin: true
    command: [sh, -c, 'echo reading; read line; echo \"got $line\"']
  - name: closed
    image: busybox
    command: [sh, -c, 'read line || echo got-eof']
",
        );
        assert!(
            eventually(Duration::from_secs(20), || logs("shell")
                .contains("all-a-terminal")
                && logs("reader").contains("reading")
                && logs("closed").contains("got-eof")),
            "{}\n{}\n{}\n{}",
            logs("shell"),
            logs("reader"),
            logs("closed"),
            events()
        );
        let shell = logs("shell");
        assert!(
            shell.contains("/dev/pts/0"),
            "the container's devpts: {shell}"
        );
        assert!(shell.contains("24 80"), "{shell}");
        // An interactive shell on its terminal and a reader of an open
        // stdin both wait; the one without stdin read its end and exited.
        assert!(!eventually(Duration::from_secs(2), || {
            let p = pod_status(&state_s, "term");
            p["containers"][0]["state"] != "Running" || p["containers"][1]["state"] != "Running"
        }));
        assert!(!logs("reader").contains("got"), "{}", logs("reader"));
        let p = pod_status(&state_s, "term");
        assert_eq!(p["containers"][2]["exit_code"], 0, "{p:#}");

        // podctl attach: its input to the container's stdin (the reader's
        // pipe, the shell's terminal), the container's output back, until
        // the container exits.
        let attach = |container: &str, input: &str, tty: bool| {
            use std::io::Write;
            let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_podctl"));
            c.args([
                "attach",
                "term",
                "-c",
                container,
                "-i",
                "--state-dir",
                &state_s,
            ]);
            if tty {
                c.arg("-t");
            }
            let mut child = c
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            let o = child.wait_with_output().unwrap();
            (
                o.status.code(),
                String::from_utf8_lossy(&o.stdout).into_owned(),
                String::from_utf8_lossy(&o.stderr).into_owned(),
            )
        };
        let (code, out, err) = attach("reader", "hello\n", false);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("got hello"), "{out:?} {err}");
        let (code, out, err) = attach("shell", "echo attached-$((1+1))\nexit\n", true);
        assert_eq!(code, Some(0), "{err}");
        assert!(out.contains("attached-2"), "{out:?} {err}");
        let (code, _, err) = attach("closed", "", false);
        assert_ne!(code, Some(0));
        assert!(
            err.contains("stdin: true or tty: true") || err.contains("exited"),
            "{err}"
        );
        std::fs::remove_file(pods.join("term.yaml")).unwrap();
        assert!(
            eventually(Duration::from_secs(15), || no_pods(&state_s)),
            "{}",
            events()
        );
    });
}
