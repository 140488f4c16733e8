//! `podctl validate` as a user runs it: the examples pass, every invalid
//! example prints exactly its expected errors, exit codes are 0, 1 and 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn podctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_podctl"))
        .current_dir(repo())
        // No host profile dir, and a fixed node memory: the output must not
        // depend on the machine.
        .args([
            "validate",
            "--seccomp-dir",
            "/nonexistent",
            "--node-memory",
            "17179869184",
        ])
        .args(args)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn every_example_validates() {
    let o = podctl(&["examples/"]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    assert_eq!(
        stdout(&o),
        "6 file(s), 6 valid pod(s), 0 error(s), 0 warning(s)\n"
    );
}

#[test]
fn verbose_output_shows_the_resolved_numbers() {
    let o = podctl(&["-v", "examples/cpu-pinned-worker.yaml"]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    for line in [
        "examples/cpu-pinned-worker.yaml: pod default/pinned-worker: qos Guaranteed, restart Always, hostname pinned-worker, pids limit 4096",
        "  pod cgroup: cpu.shares 1024, cfs quota 100000 / period 100000, memory limit 67108864",
        "    cpu: request 1000m, limit 1000m, shares 1024, weight 100, cfs quota 100000 / period 100000 (cpu.max \"100000 100000\")",
        "    memory: request 67108864, limit 67108864, swap -, oom_score_adj -997, oom kill disabled false",
        "    cpuset: 1, capabilities: AUDIT_WRITE,CHOWN,DAC_OVERRIDE,FOWNER,FSETID,KILL,MKNOD,NET_BIND_SERVICE,NET_RAW,SETFCAP,SETGID,SETPCAP,SETUID,SYS_CHROOT, no_new_privs true, seccomp RuntimeDefault",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
}

/// Each invalid example and exactly the problems it must produce.
const INVALID: &[(&str, &[&str])] = &[
    ("bad-cpuset-annotation.yaml", &[
        "6:29: metadata.annotations[\"cpuset.podagent.io/app\"]: range \"3-1\" is reversed (start must not exceed end)",
        "7:31: metadata.annotations[\"cpuset.podagent.io/other\"]: names container \"other\", which this pod does not have",
    ]),
    ("bad-io-annotation.yaml", &[
        "8:25: metadata.annotations[\"io.podagent.io/app\"]: segment 1: /dev/null: not a block device",
        "8:25: metadata.annotations[\"io.podagent.io/app\"]: segment 2: /dev/nope: no such file",
        "8:25: metadata.annotations[\"io.podagent.io/app\"]: segment 2: unknown key \"rbs\" (known: rbps, wbps, riops, wiops)",
        "8:25: metadata.annotations[\"io.podagent.io/app\"]: segment 3: weight \"5\" is not a number from 10 to 1000",
    ]),
    ("bad-pod-name.yaml", &[
        "4:9: metadata.name: \"Web_Server\" has an invalid character 'W' at index 0: a DNS-1123 subdomain has lower case letters, digits, '-' and '.', each part starting and ending with a letter or digit (e.g. \"web.example\")",
    ]),
    ("bad-ports.yaml", &[
        "10:26: spec.containers[0].ports[0].containerPort: 70000 is not a port: must be between 1 and 65535",
        "12:21: spec.containers[0].ports[1].protocol: \"HTTP\" is not one of \"TCP\", \"UDP\", \"SCTP\"",
    ]),
    ("bad-probe.yaml", &[
        "12:17: spec.containers[0].livenessProbe.httpGet.port: \"metrics\" is not the name of one of this container's ports",
        "15:9: spec.containers[0].readinessProbe: exactly one of exec, httpGet, tcpSocket, grpc is required",
    ]),
    ("bad-restart-policy.yaml", &[
        "6:18: spec.restartPolicy: \"Sometimes\" is not one of \"Always\", \"OnFailure\", \"Never\"",
    ]),
    ("duplicate-container-names.yaml", &[
        "10:13: spec.containers[0].name: \"app\" is already the name of spec.initContainers[0]: container names are unique across init and app containers",
    ]),
    ("empty-seccomp-profile.yaml", &[
        "9:25: spec.securityContext.seccompProfile.localhostProfile: required when type is Localhost (an empty profile is an error, never \"unconfined\")",
    ]),
    ("escaping-host-path.yaml", &[
        "9:15: spec.volumes[0].hostPath.path: \"/var/lib/../../etc\" must be normalised: no '..', '.', '//' or trailing '/'",
        "16:20: spec.containers[0].volumeMounts[0].subPath: \"../shadow\" must not contain '..', '.' or empty components",
    ]),
    ("garbage-quantity.yaml", &[
        "11:16: spec.containers[0].resources.requests.cpu: \"two\" is not a quantity: expected a number with an optional suffix (e.g. 500m, 0.5, 2, 64Mi, 1G, 1e3)",
        "12:19: spec.containers[0].resources.requests.memory: \"64MB\" has an unknown suffix \"MB\": valid suffixes are n, u, m, k, M, G, T, P, E, Ki, Mi, Gi, Ti, Pi, Ei or an exponent e<N>",
    ]),
    ("limit-below-request.yaml", &[
        "11:16: spec.containers[0].resources.requests.cpu: request 2 must be less than or equal to the limit 500m",
    ]),
    ("mount-over-proc.yaml", &[
        "14:22: spec.containers[0].volumeMounts[0].mountPath: \"/proc/sys\": mounting over /, /proc, /sys or /dev is refused",
    ]),
    ("negative-memory.yaml", &[
        "11:19: spec.containers[0].resources.limits.memory: \"-64Mi\" is negative: must be greater than or equal to 0",
    ]),
    ("not-a-pod.yaml", &[
        "2:7: kind: \"Deployment\" is not supported: podagent runs kind \"Pod\" (or a \"List\" of them)",
    ]),
    ("overflowing-quantity.yaml", &[
        "11:19: spec.containers[0].resources.limits.memory: \"10Ei\" is too large (the largest quantity is 2^63-1)",
    ]),
    ("privileged.yaml", &[
        "10:21: spec.containers[0].securityContext.privileged: privileged containers are refused; start podagent with --allow-privileged to permit them",
    ]),
    ("syntax-error.yaml", &[
        "9:1: invalid YAML: did not find expected ',' or ']' at line 9 column 1, while parsing a flow sequence",
    ]),
    ("unknown-volume.yaml", &[
        "10:17: spec.containers[0].volumeMounts[0].name: volume \"data\" is not defined in spec.volumes",
    ]),
    ("unsupported-volume.yaml", &[
        "9:9: spec.volumes[0].persistentVolumeClaim: persistentVolumeClaim volumes are not supported by podagent (supported: emptyDir, hostPath, downwardAPI, projected)",
    ]),
];

#[test]
fn each_invalid_example_prints_exactly_its_errors() {
    let on_disk: Vec<String> = std::fs::read_dir(repo().join("examples/invalid"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    assert_eq!(
        on_disk.len(),
        INVALID.len(),
        "every invalid example has its expected errors here"
    );
    for (file, expected) in INVALID {
        let path = format!("examples/invalid/{file}");
        let o = podctl(&[&path]);
        assert_eq!(o.status.code(), Some(1), "{path} must fail validation");
        let mut want: Vec<String> = expected.iter().map(|e| format!("{path}:{e}")).collect();
        want.push(format!(
            "1 file(s), 0 valid pod(s), {} error(s), 0 warning(s)",
            expected.len()
        ));
        let got: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
        assert_eq!(got, want, "{path}");
    }
}

#[test]
fn json_output_is_machine_readable() {
    let o = podctl(&[
        "-o",
        "json",
        "examples/invalid/bad-ports.yaml",
        "examples/batch-job.yaml",
    ]);
    assert_eq!(o.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert_eq!(v["errors"], 2);
    let d = &v["files"][0]["diagnostics"][0];
    assert_eq!(d["severity"], "error");
    assert_eq!(d["line"], 10);
    assert_eq!(d["column"], 26);
    assert_eq!(d["path"], "spec.containers[0].ports[0].containerPort");
    let job = &v["files"][1]["pods"][0];
    assert_eq!(job["restart_policy"], "OnFailure");
    assert_eq!(job["containers"][0]["resources"]["cfs_quota_us"], 50000);
    assert_eq!(
        job["volumes"][0]["source"]["EmptyDir"]["size_limit_bytes"],
        32 << 20
    );
}

#[test]
fn a_pod_in_two_files_is_a_conflict_for_the_later_file() {
    let dir = tempfile::tempdir().unwrap();
    let pod = "apiVersion: v1\nkind: Pod\nmetadata: {name: same}\nspec: {containers: [{name: c, image: busybox}]}\n";
    std::fs::write(dir.path().join("a.yaml"), pod).unwrap();
    std::fs::write(dir.path().join("b.yml"), pod).unwrap();
    std::fs::write(dir.path().join(".hidden.yaml"), "garbage: [").unwrap();
    std::fs::write(dir.path().join("a.yaml.swp"), "garbage: [").unwrap();
    std::fs::write(dir.path().join("notes.txt"), "garbage: [").unwrap();
    let o = podctl(&[dir.path().to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let b = dir.path().join("b.yml").display().to_string();
    let a = dir.path().join("a.yaml").display().to_string();
    assert_eq!(
        stdout(&o),
        format!("{b}: metadata.name: pod \"default/same\" is already defined by {a}: the first file by name wins\n2 file(s), 1 valid pod(s), 1 error(s), 0 warning(s)\n")
    );
}

#[test]
fn usage_errors_exit_2() {
    let o = podctl(&["no/such/file.yaml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no/such/file.yaml"));
    let o = Command::new(env!("CARGO_BIN_EXE_podctl"))
        .args(["validate", "--output", "xml", "x"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let o = Command::new(env!("CARGO_BIN_EXE_podctl"))
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn warnings_alone_do_not_fail_validation() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("w.yaml");
    std::fs::write(&f, "apiVersion: v1\nkind: Pod\nmetadata: {name: w}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    resources: {limits: {memory: 128m, cpu: 0.0005}}\n").unwrap();
    let o = podctl(&[f.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(out.contains("8:34: warning: spec.containers[0].resources.limits.memory: \"128m\" is in millibytes (the 'm' suffix): did you mean 128Mi?"), "{out}");
    assert!(out.contains("8:45: warning: spec.containers[0].resources.limits.cpu: \"0.0005\" is finer than 1m: rounded up to 1m precision, as Kubernetes does"), "{out}");
}
