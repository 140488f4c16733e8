//! `podctl image` as a user runs it.

mod support;

fn podctl(root: &std::path::Path, args: &[&str]) -> (i32, String, String) {
    let root = root.display().to_string();
    support::podctl(&[&["image", "--root-dir", &root][..], args].concat())
}

#[test]
fn import_rootfs_then_ls_then_rm() {
    let root = tempfile::tempdir().unwrap();
    let rootfs = tempfile::tempdir().unwrap();
    std::fs::create_dir(rootfs.path().join("bin")).unwrap();
    std::fs::write(rootfs.path().join("bin/sh"), "not really a shell").unwrap();

    let (code, out, err) = podctl(
        root.path(),
        &[
            "import-rootfs",
            rootfs.path().to_str().unwrap(),
            "mini",
            "--cmd",
            "sh",
            "-c",
            "true",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("imported mini:latest sha256:"), "{out}");

    let (code, out, _) = podctl(root.path(), &["ls"]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].starts_with("mini:latest "), "{out}");

    let (code, _, err) = podctl(root.path(), &["import-rootfs", "/nonexistent", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("/nonexistent"), "{err}");
    let (code, _, err) = podctl(
        root.path(),
        &["import-rootfs", rootfs.path().to_str().unwrap(), "Bad Name"],
    );
    assert_eq!(code, 1);
    assert!(err.contains("is not an image reference"), "{err}");

    assert_eq!(podctl(root.path(), &["rm", "mini"]).0, 0);
    let (code, _, err) = podctl(root.path(), &["rm", "mini"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        "podctl image: image \"mini:latest\" is not in the store"
    );
    assert_eq!(podctl(root.path(), &["ls"]).1.lines().count(), 1);
}
