//! Pulls from the real registry: by tag and digest, verified, with basic
//! auth and TLS; the agent's pulls end to end; mirrors.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};
use crate::{pull, pulling_agent, tools, Registry};

#[test]
fn images_are_pulled_verified_from_a_real_registry_anonymous_and_with_basic_auth() {
    if !require() || !tools() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("registry");
        let source = fx.dir.path().join("store/images");
        let reg = Registry::start(5000, None);
        reg.push(&source, "busybox:latest", "test/busybox:1", None);
        let root = fx.dir.path().join("pulled");
        let insecure = ["--insecure-registry", reg.addr.as_str()];
        let auth = fx.dir.path().join("auth.json");

        // By tag: the image is in the store and runs.
        let image = format!("{}/test/busybox:1", reg.addr);
        let (code, out, err) = pull(&root, &image, &insecure);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with(&format!("pulled {image} sha256:")), "{out}");
        let digest = out.split_whitespace().nth(2).unwrap().to_string();
        let (_, ls, _) = podctl(&["image", "--root-dir", &root.display().to_string(), "ls"]);
        assert!(ls.contains(&image), "{ls}");
        let store = agent::image::ImageStore::open(&root.join("store")).unwrap();
        let resolved = store.resolve(&image).unwrap();
        assert!(resolved.layers[0].join("bin/busybox").exists());
        let rt = agent::runtime::Runtime {
            state_dir: fx.dir.path().join("pulled-state"),
            images: store,
            cgroups: agent::cgroups::detect(Path::new("/proc/self/mountinfo"))
                .unwrap()
                .driver(),
            cgroup_root: format!("{}/pulled", fx.cg_root.as_path().display()),
            podagent: fx.rt.podagent.clone(),
            cpus: None,
            registry: None,
            seccomp_dir: PathBuf::from("/nonexistent"),
            host_ip: None,
        };
        let pod = plan(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: pulled}}\nspec:\n  restartPolicy: Never\n  containers:\n  - {{name: c, image: '{image}', command: [sh, -c, 'echo ran from the registry']}}\n"
        ));
        let sb = agent::runtime::sandbox::create(&rt.state_dir, &pod).unwrap();
        rt.create_pod_cgroup(&pod).unwrap();
        let h = rt.start(&pod, &sb, None, &pod.containers[0]).unwrap();
        assert!(agent::runtime::wait_for_file(
            &h.dir.join("state"),
            "exit.json",
            Duration::from_secs(10)
        ));
        let log = std::fs::read_to_string(h.dir.join("container.log")).unwrap();
        assert!(log.contains(" stdout F ran from the registry\n"), "{log}");
        rt.remove(&pod, &pod.containers[0]).unwrap();
        rt.remove_pod(&pod).unwrap();
        let _ = rt
            .cgroups
            .remove(&agent::cgroups::CgroupPath::new(&rt.cgroup_root).unwrap());

        // By digest; a digest the registry lacks and a tag it lacks say so.
        let pinned = format!("{}/test/busybox@{digest}", reg.addr);
        let (code, out, err) = pull(&root, &pinned, &insecure);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains(&digest), "{out}");
        let absent = format!("{}/test/busybox@sha256:{}", reg.addr, "0".repeat(64));
        let (code, _, err) = pull(&root, &absent, &insecure);
        assert_ne!(code, 0);
        assert!(
            err.contains("404") && err.contains("MANIFEST_UNKNOWN"),
            "{err}"
        );
        let (code, _, err) = pull(&root, &format!("{}/test/busybox:nope", reg.addr), &insecure);
        assert_ne!(code, 0);
        assert!(err.contains("manifest test/busybox:nope: 404"), "{err}");
        // Not listed as insecure: HTTPS is spoken, and fails, clearly.
        let (code, _, err) = pull(&root, &image, &[]);
        assert_ne!(code, 0);
        assert!(
            err.contains(&format!("{}: manifest test/busybox:1", reg.addr)),
            "{err}"
        );

        // A corrupted layer in the registry is refused and nothing of it is
        // kept: the store's images and temp files are as they were.
        let layer = resolved_layer_digest(&root, &image);
        let blob = reg.data.join(format!(
            "docker/registry/v2/blobs/sha256/{}/{}/data",
            &layer[7..9],
            &layer[7..]
        ));
        let mut bytes = std::fs::read(&blob).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&blob, &bytes).unwrap();
        let fresh = fx.dir.path().join("fresh");
        let (code, _, err) = pull(&fresh, &image, &insecure);
        assert_ne!(code, 0);
        assert!(
            err.contains(&format!("blob {layer}: content hashes to")),
            "{err}"
        );
        let (_, ls, _) = podctl(&["image", "--root-dir", &fresh.display().to_string(), "ls"]);
        assert_eq!(ls.lines().count(), 1, "only the header: {ls}");
        assert!(entries(&fresh.join("store/tmp")).is_empty());
        drop(reg);

        // Behind htpasswd: no credentials, wrong ones, then the right ones;
        // the password is in no message.
        let reg = Registry::start(5001, Some(("edge", "s3cret-pw")));
        reg.push(
            &source,
            "busybox:latest",
            "private/busybox:1",
            Some("edge:s3cret-pw"),
        );
        let image = format!("{}/private/busybox:1", reg.addr);
        crate::credentials_checked(
            &root,
            &image,
            &reg.addr,
            &auth,
            ("edge", "wrong-pw", "s3cret-pw"),
            &["401", "no credentials for this registry"],
            &["the credentials were refused"],
        );
    });
}

/// The first layer's digest of `image` in the store under `root`.
fn resolved_layer_digest(root: &Path, image: &str) -> String {
    let store = agent::image::ImageStore::open(&root.join("store")).unwrap();
    let dir = store.layer_dirs(image).unwrap().remove(0);
    format!("sha256:{}", dir.file_name().unwrap().to_string_lossy())
}

/// Seconds since midnight of an RFC 3339 UTC time.
fn day_secs(t: &str) -> f64 {
    let clock = t.split('T').nth(1).unwrap().trim_end_matches('Z');
    let mut p = clock.split(':').map(|x| x.parse::<f64>().unwrap());
    p.next().unwrap() * 3600.0 + p.next().unwrap() * 60.0 + p.next().unwrap()
}

#[test]
fn the_agent_pulls_what_its_pods_need_and_backs_off_a_failed_pull() {
    if !require() || !tools() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("agent-pull");
        let source = fx.dir.path().join("store/images");
        let reg = Registry::start(5000, None);
        reg.push(&source, "busybox:latest", "test/busybox:1", None);
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = pulling_agent(&fx, &pods, &state, &reg.addr, &[]);
        let pod = |name: &str, image: &str, policy: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: '{image}', imagePullPolicy: {policy}, command: [sleep, '100000']}}\n"
            )
        };
        let once = pod(
            "once",
            &format!("{}/test/busybox:nope", reg.addr),
            "IfNotPresent",
        )
        .replace("spec:\n", "spec:\n  restartPolicy: Never\n");
        let a = &reg.addr;
        put_manifest(
            &pods,
            "pods.yaml",
            &[
                pod("remote", &format!("{a}/test/busybox:1"), "IfNotPresent"),
                pod("missing", &format!("{a}/test/busybox:nope"), "IfNotPresent"),
                pod("never", &format!("{a}/test/busybox:2"), "Never"),
                once,
            ]
            .join("---\n"),
        );
        let container = |name: &str| pod_status(&state_s, name)["containers"][0].clone();
        let events = || -> Vec<serde_json::Value> {
            let out = podctl(&["events", "-o", "raw", "--state-dir", &state_s]).1;
            serde_json::from_str(&out).unwrap_or_default()
        };
        let event = |object: &str, reason: &str| -> Option<serde_json::Value> {
            events()
                .into_iter()
                .find(|e| e["object"] == format!("default/{object}") && e["reason"] == reason)
        };

        // Only in the registry: pulled, then it runs.
        assert!(
            eventually(Duration::from_secs(60), || container("remote")["state"]
                == "Running"),
            "{:#}",
            container("remote")
        );
        assert!(event("remote", "Pulling").is_some(), "{:#?}", events());
        let pulled = event("remote", "Pulled").unwrap();
        assert!(
            pulled["message"]
                .as_str()
                .unwrap()
                .contains(&format!("pulled {a}/test/busybox:1 (sha256:")),
            "{pulled:#}"
        );

        // A tag the registry lacks: ErrImagePull with its words, shown as
        // ImagePullBackOff while the next try waits (10 s, then doubling).
        assert!(
            eventually(Duration::from_secs(30), || container("missing")["reason"]
                == "ErrImagePull"),
            "{:#}",
            container("missing")
        );
        let m = container("missing");
        assert!(
            m["message"].as_str().unwrap().contains("MANIFEST_UNKNOWN"),
            "{m:#}"
        );
        assert!(
            eventually(Duration::from_secs(40), || container("missing")["state"]
                == "ImagePullBackOff"),
            "{:#}",
            container("missing")
        );
        // The second try, 10 s after the first (the ring keeps each
        // occurrence, or counts repeats: both are read).
        let failures = || -> (u64, f64, f64) {
            let all: Vec<serde_json::Value> = events()
                .into_iter()
                .filter(|e| e["object"] == "default/missing" && e["reason"] == "Failed")
                .collect();
            let count = all.iter().map(|e| e["count"].as_u64().unwrap_or(1)).sum();
            let times = |k: &str| -> Vec<f64> {
                all.iter()
                    .map(|e| day_secs(e[k].as_str().unwrap()))
                    .collect()
            };
            let first = times("first_time").into_iter().fold(f64::MAX, f64::min);
            let last = times("time").into_iter().fold(0.0, f64::max);
            (count, first, last)
        };
        assert!(
            eventually(Duration::from_secs(40), || failures().0 >= 2),
            "{:#?}",
            events()
        );
        let (_, first, last) = failures();
        let backoff = event("missing", "BackOff").unwrap();
        assert!(
            backoff["message"]
                .as_str()
                .unwrap()
                .starts_with("back-off 10s pulling image "),
            "{backoff:#}"
        );
        let waited = last - first;
        assert!(
            waited >= 9.0,
            "retried after {waited} s, before the 10 s back-off"
        );

        // Under restartPolicy Never too the pull is retried and the pod,
        // whose container never ran, is Pending with no restart counted.
        let o = pod_status(&state_s, "once");
        assert_eq!(o["phase"], "Pending", "{o:#}");
        assert_eq!(o["containers"][0]["restart_count"], 0, "{o:#}");
        assert!(
            events()
                .iter()
                .filter(|e| e["object"] == "default/once" && e["reason"] == "Failed")
                .map(|e| e["count"].as_u64().unwrap_or(1))
                .sum::<u64>()
                >= 2,
            "{:#?}",
            events()
        );

        // Never: the image is not in the store, and nothing is pulled.
        assert!(
            eventually(Duration::from_secs(30), || container("never")["reason"]
                == "ErrImageNeverPull"),
            "{:#}",
            container("never")
        );
        assert!(event("never", "Pulling").is_none());
    });
}

/// A CA and a certificate it signed for 127.0.0.1, made with openssl in
/// `dir`: (ca.crt, server.crt, server.key).
fn make_certs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let run = |args: &[&str]| drop(crate::openssl(dir, args, None));
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "1",
        "-subj",
        "/CN=podagent test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(dir.join("ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.crt",
        "-days",
        "1",
        "-extfile",
        "ext",
    ]);
    (
        dir.join("ca.crt"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

#[test]
fn a_registry_behind_tls_is_trusted_through_its_ca_in_the_certs_dir() {
    if !require() || !tools() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("registry-tls");
        let certs = fx.dir.path().join("pki");
        std::fs::create_dir(&certs).unwrap();
        let (ca, cert, key) = make_certs(&certs);
        let reg = Registry::start_with(5443, None, Some((&cert, &key)));
        reg.push(
            &fx.dir.path().join("store/images"),
            "busybox:latest",
            "tls/busybox:1",
            None,
        );
        let image = format!("{}/tls/busybox:1", reg.addr);
        let root = fx.dir.path().join("pulled");
        let certs_d = fx.dir.path().join("certs.d");
        let certs_d_s = certs_d.display().to_string();
        let args = ["--certs-dir", certs_d_s.as_str()];
        // Its CA unknown: the certificate is refused, and said to be.
        let (code, _, err) = pull(&root, &image, &args);
        assert_ne!(code, 0);
        assert!(
            err.to_lowercase().contains("certificate") || err.contains("UnknownIssuer"),
            "{err}"
        );
        // Its CA under certs.d/<host:port>/ca.crt: verified and pulled.
        std::fs::create_dir_all(certs_d.join(&reg.addr)).unwrap();
        std::fs::copy(&ca, certs_d.join(&reg.addr).join("ca.crt")).unwrap();
        let (code, out, err) = pull(&root, &image, &args);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with(&format!("pulled {image} sha256:")), "{out}");
    });
}

#[test]
fn mirrors_are_tried_in_order_and_the_registry_last() {
    if !require() || !tools() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("registry-mirror");
        let source = fx.dir.path().join("store/images");
        let up = Registry::start(5000, None);
        let mirror = Registry::start(5002, None);
        // The mirror alone has :1, the registry alone :2.
        mirror.push(&source, "busybox:latest", "test/busybox:1", None);
        up.push(&source, "busybox:latest", "test/busybox:2", None);
        let root = fx.dir.path().join("pulled");
        let m = format!("{}={}", up.addr, mirror.addr);
        let mirror_addr = mirror.addr.clone();
        let args = [
            "--insecure-registry",
            up.addr.as_str(),
            "--insecure-registry",
            mirror_addr.as_str(),
            "--registry-mirror",
            m.as_str(),
        ];
        let (code, out, err) = pull(&root, &format!("{}/test/busybox:1", up.addr), &args);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with(&format!("pulled {}/test/busybox:1 ", up.addr)),
            "{out}"
        );
        assert_eq!(mirror.gets("test/busybox/manifests/1"), 1);
        assert_eq!(
            up.gets("test/busybox/manifests/1"),
            0,
            "the mirror answered"
        );
        // The mirror lacks :2: the registry after it.
        let (code, _, err) = pull(&root, &format!("{}/test/busybox:2", up.addr), &args);
        assert_eq!(code, 0, "{err}");
        assert_eq!(up.gets("test/busybox/manifests/2"), 1);
        // The mirror gone and the registry lacking the tag: both are said.
        drop(mirror);
        let (code, _, err) = pull(&root, &format!("{}/test/busybox:1", up.addr), &args);
        assert_ne!(code, 0);
        assert!(
            err.contains("mirrors failed (127.0.0.1:5002: ") && err.contains("MANIFEST_UNKNOWN"),
            "{err}"
        );
        // A bad mirror flag is refused with its syntax.
        let (code, _, err) = pull(&root, "busybox", &["--registry-mirror", "cache:5000"]);
        assert_ne!(code, 0);
        assert!(err.contains("REGISTRY=MIRROR expected"), "{err}");
    });
}

/// A second image beside the fixture's busybox, `marked:1`: busybox and a
/// file `/marker` saying `text`.
fn marked_image(fx: &Fixture, text: &str) {
    let dir = fx.dir.path().join(format!("marked-{text}"));
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", dir.join("bin/sh")).unwrap();
    std::os::unix::fs::symlink("busybox", dir.join("bin/sleep")).unwrap();
    std::os::unix::fs::symlink("busybox", dir.join("bin/cat")).unwrap();
    std::fs::write(dir.join("marker"), text).unwrap();
    fx.rt
        .images
        .import_rootfs(&dir, "marked:1", vec!["sh".into()])
        .unwrap();
}

#[test]
fn ten_pods_of_one_image_pull_it_once_and_always_picks_up_a_pushed_tag() {
    if !require() || !tools() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("agent-pull-once");
        let source = fx.dir.path().join("store/images");
        let reg = Registry::start(5000, None);
        reg.push(&source, "busybox:latest", "test/busybox:1", None);
        marked_image(&fx, "first");
        reg.push(&source, "marked:1", "test/app:1", None);
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = pulling_agent(&fx, &pods, &state, &reg.addr, &[]);
        let a = &reg.addr;
        let many: Vec<String> = (0..10)
            .map(|i| {
                format!(
                    "apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: '{a}/test/busybox:1', command: [sleep, '100000']}}\n"
                )
            })
            .collect();
        put_manifest(&pods, "many.yaml", &many.join("---\n"));
        let all_running = || {
            (0..10).all(|i| {
                pod_status(&state_s, &format!("p{i}"))["containers"][0]["state"] == "Running"
            })
        };
        assert!(
            eventually(Duration::from_secs(90), all_running),
            "{:#}",
            pod_status(&state_s, "p0")
        );
        // One pull: one manifest and one layer fetched for the ten.
        let layer = resolved_layer_digest(fx.dir.path(), &format!("{a}/test/busybox:1"));
        assert_eq!(reg.gets("test/busybox/manifests/1"), 1);
        assert_eq!(reg.gets(&format!("test/busybox/blobs/{layer}")), 1);
        let id = pod_status(&state_s, "p0")["containers"][0]["image_id"].clone();
        assert!(
            id.as_str()
                .unwrap()
                .starts_with(&format!("{a}/test/busybox@sha256:")),
            "{id}"
        );
        put_manifest(&pods, "many.yaml", "");

        // Always: each start resolves the tag; a tag pushed again is pulled
        // at the next start, and imageID is the new digest.
        put_manifest(
            &pods,
            "app.yaml",
            &format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: app}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: '{a}/test/app:1', imagePullPolicy: Always, command: [sh, -c, 'cat /marker; sleep 3']}}\n"
            ),
        );
        let app = || pod_status(&state_s, "app")["containers"][0].clone();
        assert!(
            eventually(Duration::from_secs(30), || app()["state"] == "Running"),
            "{:#}",
            app()
        );
        let first = app()["image_id"].as_str().unwrap().to_string();
        marked_image(&fx, "second");
        reg.push(&source, "marked:1", "test/app:1", None);
        assert!(
            eventually(Duration::from_secs(60), || app()["image_id"]
                .as_str()
                .is_some_and(|i| i != first)
                && app()["state"] == "Running"),
            "{:#}",
            app()
        );
        let second = app()["image_id"].as_str().unwrap().to_string();
        assert!(
            second.starts_with(&format!("{a}/test/app@sha256:")),
            "{second}"
        );
        let info = fx
            .rt
            .images
            .list()
            .unwrap()
            .into_iter()
            .find(|i| i.reference == format!("{a}/test/app:1"))
            .unwrap();
        assert_eq!(second, format!("{a}/test/app@{}", info.digest));
        assert!(
            reg.gets("test/app/manifests/1") >= 2,
            "the tag was resolved at each start"
        );
    });
}

#[test]
fn an_offline_node_runs_what_it_has_and_says_why_it_cannot_pull_the_rest() {
    if !require() || !tools() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("agent-offline");
        let reg = Registry::with_busybox(5000, &fx);
        let a = reg.addr.clone();
        let image = format!("{a}/test/busybox:1");
        let (code, out, err) = pull(fx.dir.path(), &image, &["--insecure-registry", &a]);
        assert_eq!(code, 0, "{err}");
        let digest = out.split_whitespace().nth(2).unwrap().to_string();
        // The registry gone: nothing listens on its port any more.
        drop(reg);
        let (pods, state, state_s) = fx.agent_dirs();
        let _agent = pulling_agent(&fx, &pods, &state, &a, &[]);
        let pod = |name: &str, image: &str, policy: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: '{image}', {policy}command: [sleep, '100000']}}\n"
            )
        };
        put_manifest(
            &pods,
            "pods.yaml",
            &[
                pod("present", &image, "imagePullPolicy: IfNotPresent, "),
                // Pinned by digest (IfNotPresent by default): found by its
                // digest under the tag it was pulled by.
                pod("pinned", &format!("{a}/test/busybox@{digest}"), ""),
                pod("absent", &format!("{a}/test/other:1"), ""),
            ]
            .join("---\n"),
        );
        let container = |name: &str| pod_status(&state_s, name)["containers"][0].clone();
        for name in ["present", "pinned"] {
            assert!(
                eventually(Duration::from_secs(30), || container(name)["state"]
                    == "Running"),
                "{name}: {:#}",
                container(name)
            );
        }
        assert!(
            eventually(Duration::from_secs(30), || container("absent")["reason"]
                == "ErrImagePull"),
            "{:#}",
            container("absent")
        );
        let m = container("absent")["message"].as_str().unwrap().to_string();
        assert!(
            m.to_lowercase().contains("connection refused") || m.contains("Connection refused"),
            "{m}"
        );
        let out = podctl(&["events", "-o", "raw", "--state-dir", &state_s]).1;
        let events: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
        for name in ["present", "pinned"] {
            assert!(
                !events
                    .iter()
                    .any(|e| e["object"] == format!("default/{name}") && e["reason"] == "Pulling"),
                "{name} was pulled: {out}"
            );
        }
        assert_eq!(
            container("pinned")["image_id"],
            format!("{a}/test/busybox@{digest}")
        );
    });
}

#[test]
fn podctl_pull_shows_its_progress_on_a_terminal_only() {
    if !require() || !tools() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("registry-progress");
        let reg = Registry::with_busybox(5000, &fx);
        let root = fx.dir.path().join("pulled").display().to_string();
        let image = format!("{}/test/busybox:1", reg.addr);
        let cmd = format!(
            "{} image --root-dir {root} pull {image} --insecure-registry {}",
            env!("CARGO_BIN_EXE_podctl"),
            reg.addr
        );
        // On a terminal (script(1) gives it one): a line per blob, redrawn.
        let on_tty = || {
            let out = Command::new("script")
                .args(["-qec", &cmd, "/dev/null"])
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let first = on_tty();
        assert!(
            first.contains("\x1b[2K") && first.contains("MiB/s") && first.contains("done"),
            "{first:?}"
        );
        assert!(
            first.contains(&format!("pulled {image} sha256:")),
            "{first:?}"
        );
        let again = on_tty();
        assert!(again.contains("already present"), "{again:?}");
        // Elsewhere: quiet.
        let (code, out, err) = pull(
            Path::new(&root),
            &image,
            &["--insecure-registry", &reg.addr],
        );
        assert_eq!(code, 0, "{err}");
        assert!(
            !err.contains('\x1b') && !out.contains('\x1b'),
            "{err:?} {out:?}"
        );
    });
}
