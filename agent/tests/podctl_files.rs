//! `podctl apply`, `diff` and `delete` on a pods dir: validated first,
//! written atomically, refused with a reason, and `diff` says what the agent
//! would do. No root, no agent.

use std::path::Path;

mod support;

use support::podctl;

const WEB: &str = "apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - {name: httpd, image: busybox, command: [httpd, -f], resources: {limits: {cpu: 500m}}}
";

const TWO: &str = "apiVersion: v1
kind: Pod
metadata: {name: one}
spec:
  containers: [{name: c, image: busybox}]
---
apiVersion: v1
kind: Pod
metadata: {name: two}
spec:
  containers: [{name: c, image: busybox}]
";

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn apply_diff_and_delete_work_on_the_pods_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let pods = tmp.path().join("pods");
    std::fs::create_dir(&pods).unwrap();
    let pods_s = pods.display().to_string();
    let src = tmp.path().join("web.yaml");
    std::fs::write(&src, WEB).unwrap();
    let src_s = src.display().to_string();

    assert_eq!(
        podctl(&["diff", &src_s, "--pods-dir", &pods_s]).1,
        "pod/default/web: created\n"
    );
    let (code, out, _) = podctl(&["apply", "-f", &src_s, "--pods-dir", &pods_s]);
    assert_eq!(code, 0);
    assert!(out.contains("pod/default/web: created"), "{out}");
    assert_eq!(files(&pods), ["web.yaml"], "no temp file left");
    assert_eq!(std::fs::read_to_string(pods.join("web.yaml")).unwrap(), WEB);
    assert!(podctl(&["apply", "-f", &src_s, "--pods-dir", &pods_s])
        .1
        .contains("unchanged"));

    // Resources alone: resized in place; the command: restarted.
    std::fs::write(&src, WEB.replace("500m", "750m")).unwrap();
    assert_eq!(
        podctl(&["diff", &src_s, "--pods-dir", &pods_s]).1,
        "pod/default/web: container httpd resized in place\n"
    );
    std::fs::write(&src, WEB.replace("[httpd, -f]", "[httpd, -f, -v]")).unwrap();
    assert_eq!(
        podctl(&["diff", &src_s, "--pods-dir", &pods_s]).1,
        "pod/default/web: container httpd restarted (its spec changed)\n"
    );

    // An invalid manifest is refused and nothing is written.
    std::fs::write(&src, WEB.replace("name: httpd", "name: Bad_Name")).unwrap();
    let (code, _, err) = podctl(&["apply", "-f", &src_s, "--pods-dir", &pods_s]);
    assert_eq!(code, 1);
    assert!(err.contains("Bad_Name"), "{err}");
    assert_eq!(std::fs::read_to_string(pods.join("web.yaml")).unwrap(), WEB);

    // A pod already defined by another file is refused.
    let other = tmp.path().join("another.yaml");
    std::fs::write(&other, WEB).unwrap();
    let (code, _, err) = podctl(&[
        "apply",
        "-f",
        &other.display().to_string(),
        "--pods-dir",
        &pods_s,
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("already defined"), "{err}");
    assert_eq!(files(&pods), ["web.yaml"]);

    // delete: a near miss is suggested; a file with other pods is kept.
    let (code, _, err) = podctl(&["delete", "wbe", "--pods-dir", &pods_s]);
    assert_eq!(code, 1);
    assert!(err.contains("did you mean default/web?"), "{err}");
    std::fs::write(pods.join("two.yaml"), TWO).unwrap();
    let (code, _, err) = podctl(&["delete", "one", "--pods-dir", &pods_s]);
    assert_eq!(code, 1);
    assert!(err.contains("also defines default/two"), "{err}");
    let (code, out, _) = podctl(&["delete", "web", "--pods-dir", &pods_s]);
    assert_eq!(code, 0, "{out}");
    assert_eq!(files(&pods), ["two.yaml"]);
}
