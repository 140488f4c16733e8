//! Image garbage collection end to end: the agent's store on a tmpfs of
//! the test's, filled past the high threshold; the agent removes unused
//! images least recently used first (its starts count as uses), stops once
//! the filesystem is back under the low threshold, and never takes an
//! image a pod uses. Then `podctl image ls` and `prune`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};

/// A tmpfs mounted on `dir` (created), unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .unwrap();
        Tmpfs(dir.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        if nix::mount::umount(&self.0).is_err() {
            let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

/// An image `name:1` of busybox and 1 MiB of random bytes (so each has a
/// digest and a size of its own).
fn import(store: &agent::image::ImageStore, work: &Path, name: &str) -> agent::image::ImageInfo {
    let dir = work.join(name);
    std::fs::create_dir_all(dir.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.join("bin/busybox")).unwrap();
    for applet in ["sh", "sleep"] {
        std::os::unix::fs::symlink("busybox", dir.join("bin").join(applet)).unwrap();
    }
    let mut pad = vec![0u8; 1 << 20];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut pad))
        .unwrap();
    std::fs::write(dir.join("pad"), pad).unwrap();
    store
        .import_rootfs(&dir, &format!("{name}:1"), vec!["sh".into()])
        .unwrap()
}

/// Bytes a file takes on the tmpfs (whole pages).
fn on_disk(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len().div_ceil(4096) * 4096)
}

fn pod(name: &str, image: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: '{image}', imagePullPolicy: Never, command: [sleep, '100000']}}\n"
    )
}

#[test]
fn image_gc_removes_the_least_recently_used_until_the_low_threshold() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("image-gc");
        let root = fx.dir.path().join("gc-root");
        let _tmpfs = Tmpfs::mount(&root, "64m");
        let store = agent::image::ImageStore::open(&root.join("store")).unwrap();
        let work = fx.dir.path().join("gc-images");
        let infos: Vec<_> = (0..6)
            .map(|i| import(&store, &work, &format!("img-{i}")))
            .collect();
        let (pods, state, state_s) = fx.agent_dirs();
        let root_s = root.display().to_string();
        let agent = Running(spawn_agent(
            &fx,
            &pods,
            &state,
            &[
                "--no-network",
                "--root-dir",
                &root_s,
                "--resync-secs",
                "1",
                "--image-gc-high-threshold",
                "60",
                "--image-gc-low-threshold",
                "50",
                "--image-minimum-gc-age",
                "0",
            ],
        ));
        // img-0 runs throughout; img-1, the oldest of the others, is used
        // last (its pod then goes).
        put_manifest(&pods, "keep.yaml", &pod("keep", "img-0:1"));
        put_manifest(&pods, "used.yaml", &pod("used", "img-1:1"));
        let running = |n: &str| pod_status(&state_s, n)["containers"][0]["state"] == "Running";
        assert!(
            eventually(Duration::from_secs(30), || running("keep")
                && running("used")),
            "{:#}",
            raw_status(&state_s)
        );
        std::fs::remove_file(pods.join("used.yaml")).unwrap();
        assert!(eventually(Duration::from_secs(30), || pod_status(
            &state_s, "used"
        )
        .is_null()));

        // Filled past 60%, so that removing img-2 and img-3 is not enough to
        // get under 50% and img-4 as well is.
        let (capacity, available) = store.filesystem().unwrap();
        let size = |i: usize| -> u64 {
            let blobs = root.join("store/images/blobs/sha256");
            let manifest = &infos[i].digest[7..];
            let m: serde_json::Value =
                serde_json::from_slice(&std::fs::read(blobs.join(manifest)).unwrap()).unwrap();
            let mut total = on_disk(&blobs.join(manifest));
            total += on_disk(&blobs.join(&m["config"]["digest"].as_str().unwrap()[7..]));
            for l in m["layers"].as_array().unwrap() {
                total += on_disk(&blobs.join(&l["digest"].as_str().unwrap()[7..]));
            }
            total
        };
        let target = capacity * 50 / 100;
        let filler = available + size(2) + size(3) + size(4) / 2 - target;
        let after = available - filler;
        assert!(
            agent::image::gc::used_percent(capacity, after) >= 60,
            "the filler does not cross the high threshold: {capacity} {available} {filler}"
        );
        std::fs::write(root.join("filler"), vec![0u8; filler as usize]).unwrap();

        let events = || podctl(&["events", "-o", "raw", "--state-dir", &state_s]).1;
        let gc_event = || -> Option<serde_json::Value> {
            let all: Vec<serde_json::Value> = serde_json::from_str(&events()).unwrap_or_default();
            all.into_iter().find(|e| e["reason"] == "ImageGC")
        };
        assert!(
            eventually(Duration::from_secs(30), || gc_event().is_some()),
            "{}",
            events()
        );
        let msg = gc_event().unwrap()["message"].as_str().unwrap().to_string();
        assert!(
            msg.contains("removed img-2:1, img-3:1, img-4:1;"),
            "least recently used first, and no more than needed: {msg}"
        );
        assert_eq!(crate::references(&store), ["img-0:1", "img-1:1", "img-5:1"]);
        let (capacity, available) = store.filesystem().unwrap();
        assert!(agent::image::gc::used_percent(capacity, available) <= 50);
        assert!(running("keep"), "the pod's image stayed");
        assert!(!events().contains("FreeDiskSpaceFailed"));
        // Nothing of the removed images is left in the store's temp dir.
        assert!(entries(&root.join("store/tmp")).is_empty());

        // ls names the pods that use an image; prune takes every image no
        // pod uses and keeps the running one's.
        let (code, ls, err) = podctl(&[
            "image",
            "--root-dir",
            &root_s,
            "ls",
            "--state-dir",
            &state_s,
        ]);
        assert_eq!(code, 0, "{err}");
        let line = |r: &str| {
            ls.lines()
                .find(|l| l.starts_with(r))
                .unwrap_or("")
                .to_string()
        };
        assert!(line("img-0:1 ").ends_with("  default/keep"), "{ls}");
        assert!(line("img-5:1 ").ends_with("  -"), "{ls}");
        let prune = || {
            podctl(&[
                "image",
                "--root-dir",
                &root_s,
                "prune",
                "--state-dir",
                &state_s,
            ])
        };
        let (code, out, err) = prune();
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("removed img-1:1 ") && out.contains("removed img-5:1 "),
            "{out}"
        );
        assert_eq!(crate::references(&store), ["img-0:1"]);
        drop(agent);
        // The agent gone: prune refuses, unless forced.
        let (code, _, err) = prune();
        assert_ne!(code, 0);
        assert!(err.contains("the agent did not answer"), "{err}");
    });
}
