//! The image store with real archives: OCI layouts the test builds (plain,
//! gzip and zstd layers, whiteouts, links, devices), corrupt and hostile ones.
//! Needs root for device nodes, ownership and trusted xattrs; outside CI a
//! missing privilege skips, with CI=true it fails.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use agent::image::{ImageError, ImageStore, MEDIA_LAYER_GZIP, MEDIA_LAYER_TAR, MEDIA_LAYER_ZSTD};
use serde_json::json;
use specs::hash::sha256_hex;

fn require() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("CI=true and the image tests need root");
    }
    eprintln!("skipping: needs root");
    false
}

/// A tar layer built entry by entry.
struct Layer(tar::Builder<Vec<u8>>);

impl Layer {
    fn new() -> Self {
        Layer(tar::Builder::new(Vec::new()))
    }
    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h
    }
    fn dir(mut self, path: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn file(mut self, path: &str, body: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, body.len() as u64);
        self.0.append_data(&mut h, path, body.as_bytes()).unwrap();
        self
    }
    /// A path the tar crate's safe writers would refuse, written raw.
    fn raw_file(mut self, path: &str, body: &str) -> Self {
        let mut h = Self::header(tar::EntryType::Regular, 0o644, body.len() as u64);
        let name = h.as_old_mut().name.as_mut();
        name[..path.len()].copy_from_slice(path.as_bytes());
        h.set_cksum();
        self.0.append(&h, body.as_bytes()).unwrap();
        self
    }
    fn link(mut self, kind: tar::EntryType, path: &str, target: &str) -> Self {
        let mut h = Self::header(kind, 0o777, 0);
        self.0.append_link(&mut h, path, target).unwrap();
        self
    }
    fn char_dev(mut self, path: &str, major: u32, minor: u32) -> Self {
        let mut h = Self::header(tar::EntryType::Char, 0o666, 0);
        h.set_device_major(major).unwrap();
        h.set_device_minor(minor).unwrap();
        self.0.append_data(&mut h, path, &[][..]).unwrap();
        self
    }
    fn bytes(self) -> Vec<u8> {
        self.0.into_inner().unwrap()
    }
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn zstd(b: &[u8]) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(b, ruzstd::encoding::CompressionLevel::Fastest)
}

/// Writes an OCI image layout of `layers` (media type, uncompressed tar,
/// stored bytes) into `dir`, the manifest tagged `name`.
fn layout(
    dir: &Path,
    name: &str,
    layers: &[(&str, Vec<u8>, Vec<u8>)],
) -> BTreeMap<&'static str, String> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> (String, u64) {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len() as u64)
    };
    let mut layer_descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (media, tar, stored) in layers {
        let (d, s) = put(stored);
        layer_descs.push(json!({"mediaType": media, "digest": d, "size": s}));
        diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
    }
    let config = json!({"architecture": agent::image::arch(), "os": "linux",
        "config": {"Entrypoint": ["/bin/app"], "Cmd": ["--serve"], "Env": ["A=1"], "WorkingDir": "/srv", "User": "1000:1000"},
        "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let (cd, cs) = put(config.to_string().as_bytes());
    let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cs},
        "layers": layer_descs});
    let (md, ms) = put(manifest.to_string().as_bytes());
    let index = json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md, "size": ms, "annotations": {"org.opencontainers.image.ref.name": name}}]});
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    BTreeMap::from([("manifest", md), ("config", cd)])
}

fn store() -> (tempfile::TempDir, ImageStore) {
    let dir = tempfile::tempdir().unwrap();
    let s = ImageStore::open(&dir.path().join("store")).unwrap();
    (dir, s)
}

#[test]
fn import_rootfs_makes_a_one_layer_image_of_a_directory() {
    if !require() {
        return;
    }
    let (_d, store) = store();
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("bin")).unwrap();
    std::fs::write(src.path().join("bin/tool"), "#!/bin/sh\necho hi\n").unwrap();
    std::fs::set_permissions(
        src.path().join("bin/tool"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    std::os::unix::fs::symlink("tool", src.path().join("bin/alias")).unwrap();
    let info = store
        .import_rootfs(src.path(), "tools", vec!["sh".into()])
        .unwrap();
    assert_eq!(info.reference, "tools:latest");
    assert_eq!(store.list().unwrap(), std::slice::from_ref(&info));
    let img = store.resolve("tools").unwrap();
    assert_eq!(img.config.cmd, Some(vec!["sh".to_string()]));
    assert_eq!(img.layers.len(), 1);
    let tool = img.layers[0].join("bin/tool");
    assert_eq!(
        std::fs::read_to_string(&tool).unwrap(),
        "#!/bin/sh\necho hi\n"
    );
    assert_eq!(
        std::fs::metadata(&tool).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_link(img.layers[0].join("bin/alias")).unwrap(),
        PathBuf::from("tool")
    );
    // Resolving again reuses the unpacked layer.
    assert_eq!(store.resolve("tools:latest").unwrap().layers, img.layers);
}

#[test]
fn layers_in_every_compression_unpack_with_whiteouts_links_and_devices() {
    if !require() {
        return;
    }
    let (_d, store) = store();
    let base = Layer::new()
        .dir("etc")
        .file("etc/config", "v1")
        .file("etc/secret", "s")
        .dir("var")
        .dir("var/cache")
        .file("var/cache/old", "x")
        .file("bin/app", "binary")
        .link(tar::EntryType::Link, "bin/app-hardlink", "bin/app")
        .link(tar::EntryType::Symlink, "bin/app-symlink", "app")
        .char_dev("dev/null-copy", 1, 3)
        .bytes();
    let upper = Layer::new()
        .file("etc/.wh.secret", "")
        .file("var/cache/.wh..wh..opq", "")
        .file("var/cache/new", "y")
        .bytes();
    let top = Layer::new().file("etc/config", "v2").bytes();
    let src = tempfile::tempdir().unwrap();
    layout(
        src.path(),
        "registry.local/app:v1",
        &[
            (MEDIA_LAYER_TAR, base.clone(), base),
            (MEDIA_LAYER_GZIP, upper.clone(), gzip(&upper)),
            (MEDIA_LAYER_ZSTD, top.clone(), zstd(&top)),
        ],
    );
    let imported = store.import(src.path(), None).unwrap();
    assert_eq!(imported[0].reference, "registry.local/app:v1");
    let img = store.resolve("registry.local/app:v1").unwrap();
    assert_eq!(img.config.entrypoint, Some(vec!["/bin/app".to_string()]));
    assert_eq!(img.config.user.as_deref(), Some("1000:1000"));
    let [l0, l1, l2] = &img.layers[..] else {
        panic!("three layers")
    };
    let m = std::fs::metadata(l0.join("bin/app-hardlink")).unwrap();
    assert_eq!(
        m.ino(),
        std::fs::metadata(l0.join("bin/app")).unwrap().ino(),
        "a hard link, not a copy"
    );
    let dev = std::fs::metadata(l0.join("dev/null-copy")).unwrap();
    assert!(dev.file_type().is_char_device());
    assert_eq!(dev.rdev(), nix::sys::stat::makedev(1, 3));
    // Whiteouts in overlayfs form.
    let wh = std::fs::metadata(l1.join("etc/secret")).unwrap();
    assert!(
        wh.file_type().is_char_device() && wh.rdev() == 0,
        "a 0:0 character device hides etc/secret"
    );
    assert_eq!(
        xattr::get(l1.join("var/cache"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert!(!l1.join("var/cache/.wh..wh..opq").exists());
    assert_eq!(
        std::fs::read_to_string(l2.join("etc/config")).unwrap(),
        "v2"
    );
}

#[test]
fn a_corrupt_blob_is_refused_and_nothing_is_tagged() {
    if !require() {
        return;
    }
    let (_d, store) = store();
    let tar = Layer::new().file("a", "content").bytes();
    let src = tempfile::tempdir().unwrap();
    layout(
        src.path(),
        "corrupt:v1",
        &[(MEDIA_LAYER_TAR, tar.clone(), tar.clone())],
    );
    let blob = src.path().join("blobs/sha256").join(sha256_hex(&tar));
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[0] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let err = store.import(src.path(), None).unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("content hashes to sha256:"),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
}

#[test]
fn a_layer_whose_content_does_not_match_its_diff_id_leaves_no_rootfs() {
    if !require() {
        return;
    }
    let (dir, store) = store();
    let tar = Layer::new().file("a", "content").bytes();
    let other = Layer::new().file("a", "other").bytes();
    let src = tempfile::tempdir().unwrap();
    // The blob is intact (its digest matches), the diff_id names other content.
    layout(src.path(), "lying:v1", &[(MEDIA_LAYER_TAR, other, tar)]);
    store.import(src.path(), None).unwrap();
    let err = store.resolve("lying:v1").unwrap_err();
    assert!(err.to_string().contains("the config says"), "{err}");
    let layers = dir.path().join("store/layers/sha256");
    assert_eq!(
        std::fs::read_dir(&layers).unwrap().count(),
        0,
        "no half-unpacked layer"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("store/tmp"))
            .unwrap()
            .count(),
        0,
        "no temp dir left"
    );
}

#[test]
fn a_truncated_compressed_layer_is_an_error() {
    if !require() {
        return;
    }
    let (dir, store) = store();
    let tar = Layer::new().file("big", &"z".repeat(100_000)).bytes();
    let gz = gzip(&tar);
    let cut = gz[..gz.len() / 2].to_vec();
    let src = tempfile::tempdir().unwrap();
    layout(src.path(), "cut:v1", &[(MEDIA_LAYER_GZIP, tar, cut)]);
    store.import(src.path(), None).unwrap();
    let err = store.resolve("cut:v1").unwrap_err();
    assert!(matches!(err, ImageError::Corrupt { .. }), "{err}");
    assert_eq!(
        std::fs::read_dir(dir.path().join("store/layers/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn hostile_entries_never_write_outside_the_layer() {
    if !require() {
        return;
    }
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dot-dot",
            Layer::new().raw_file("../../victim", "pwned").bytes(),
        ),
        (
            "symlink-parent",
            Layer::new()
                .link(
                    tar::EntryType::Symlink,
                    "escape",
                    outside.path().to_str().unwrap(),
                )
                .file("escape/victim", "pwned")
                .bytes(),
        ),
        (
            "hardlink-out",
            Layer::new()
                .link(tar::EntryType::Link, "stolen", "../../../etc/passwd")
                .bytes(),
        ),
        (
            "symlink-then-hardlink",
            Layer::new()
                .link(tar::EntryType::Symlink, "etc", "/etc")
                .link(tar::EntryType::Link, "passwd", "etc/passwd")
                .bytes(),
        ),
    ];
    for (name, tar) in cases {
        let (dir, store) = store();
        let src = tempfile::tempdir().unwrap();
        let reference = format!("hostile-{name}:v1");
        layout(
            src.path(),
            &reference,
            &[(MEDIA_LAYER_TAR, tar.clone(), tar)],
        );
        store.import(src.path(), None).unwrap();
        let err = store.resolve(&reference).unwrap_err();
        assert!(
            matches!(err, ImageError::HostileEntry { .. }),
            "{name}: {err}"
        );
        assert!(!victim.exists(), "{name} wrote outside the layer");
        assert_eq!(
            std::fs::read_dir(dir.path().join("store/layers/sha256"))
                .unwrap()
                .count(),
            0,
            "{name}"
        );
    }
}

#[test]
fn an_oci_archive_imports_like_its_directory_and_rm_sweeps_blobs() {
    if !require() {
        return;
    }
    let (dir, store) = store();
    let tar = Layer::new().file("hello", "world").bytes();
    let src = tempfile::tempdir().unwrap();
    layout(
        src.path(),
        "archived:v2",
        &[(MEDIA_LAYER_GZIP, tar.clone(), gzip(&tar))],
    );
    let archive = src.path().with_extension("tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&archive).unwrap());
        b.append_dir_all(".", src.path()).unwrap();
        b.finish().unwrap();
    }
    let infos = store.import(&archive, None).unwrap();
    assert_eq!(infos[0].reference, "archived:v2");
    let img = store.resolve("archived:v2").unwrap();
    assert_eq!(
        std::fs::read_to_string(img.layers[0].join("hello")).unwrap(),
        "world"
    );

    let err = store
        .remove("archived:v2", &|r| {
            (r == "archived:v2").then(|| "a test".to_string())
        })
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "image \"archived:v2\" is used by a test: stop it first"
    );
    assert_eq!(store.list().unwrap().len(), 1);
    store.remove("archived:v2", &|_| None).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(
        std::fs::read_dir(dir.path().join("store/images/blobs/sha256"))
            .unwrap()
            .count(),
        0,
        "blobs swept"
    );
    assert_eq!(
        std::fs::read_dir(dir.path().join("store/layers/sha256"))
            .unwrap()
            .count(),
        0,
        "layers swept"
    );
    std::fs::remove_file(archive).unwrap();
}
