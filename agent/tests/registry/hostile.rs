//! What no real registry does on purpose: answers too large, too long,
//! mismatched, looping or dripping, a layer escaping its root, and a
//! connection cut in the middle of a blob. A server (or a proxy in front of
//! the real registry) of the test's own, on 127.0.0.1 in the test's network
//! namespace. Each refusal is a clear error and leaves the store as it was.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sha2::Digest;

use crate::support::fixture::*;
use crate::support::{eventually, podctl, require};
use crate::{pull, pulling_agent, tools, Registry};

fn sha(bytes: &[u8]) -> String {
    let h = sha2::Sha256::digest(bytes);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A request's path and its whole head (the request line and headers).
pub struct Request {
    pub path: String,
    pub head: String,
}

impl Request {
    /// A header's value, by its name in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

/// The head of one request on `s`, or none at EOF.
fn read_request(s: &mut TcpStream) -> Option<Request> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let path = head.split_whitespace().nth(1)?.to_string();
    Some(Request { path, head })
}

/// An answer: status line and headers, a body, and whether it is dripped.
pub struct Answer {
    pub head: String,
    pub body: Vec<u8>,
    pub drip: bool,
}

pub fn ok(content_type: &str, body: Vec<u8>) -> Answer {
    Answer {
        head: format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        ),
        body,
        drip: false,
    }
}

/// Serves `answer(path)` on 127.0.0.1:`port`, a thread per connection,
/// until the test's process ends. (A dripping answer is what sleeps here:
/// the server plays a slow registry.)
#[allow(clippy::disallowed_methods)]
pub fn serve(port: u16, answer: impl Fn(&Request) -> Answer + Send + Sync + 'static) {
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut s = s;
                while let Some(req) = read_request(&mut s) {
                    let a = answer(&req);
                    let mut out = a.head.into_bytes();
                    out.extend_from_slice(b"\r\n");
                    if s.write_all(&out).is_err() {
                        return;
                    }
                    if a.drip {
                        for b in a.body.chunks(1) {
                            std::thread::sleep(Duration::from_millis(300));
                            if s.write_all(b).is_err() {
                                return;
                            }
                        }
                    } else if s.write_all(&a.body).is_err() {
                        return;
                    }
                }
            });
        }
    });
}

/// An image of one uncompressed layer `tar`: (manifest, config) bytes.
fn image_of(tar: &[u8], layer_size: u64) -> (Vec<u8>, Vec<u8>) {
    let config = format!(
        r#"{{"architecture":"{}","os":"linux","config":{{"Cmd":["sh"]}},"rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        agent::image::arch(),
        sha(tar)
    )
    .into_bytes();
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{}","size":{layer_size}}}]}}"#,
        sha(&config),
        config.len(),
        sha(tar)
    )
    .into_bytes();
    (manifest, config)
}

/// A tar of one file whose name climbs out of the root.
fn escaping_tar() -> Vec<u8> {
    let mut h = tar::Header::new_gnu();
    let name = b"../escaped-by-layer";
    h.as_old_mut().name[..name.len()].copy_from_slice(name);
    h.set_size(3);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append(&h, &b"bad"[..]).unwrap();
    b.into_inner().unwrap()
}

fn plain_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_path("file").unwrap();
    h.set_size(5);
    h.set_mode(0o644);
    h.set_cksum();
    b.append(&h, &b"hello"[..]).unwrap();
    b.into_inner().unwrap()
}

/// A file or directory called `name` somewhere under `dir`.
fn named_below(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name() == name
                || (e.file_type().is_ok_and(|t| t.is_dir()) && named_below(&e.path(), name))
        })
}

/// Only the header line: the store under `root` has no image.
fn no_images(root: &Path) -> bool {
    let (_, ls, _) = podctl(&["image", "--root-dir", &root.display().to_string(), "ls"]);
    ls.lines().count() == 1
}

#[test]
fn hostile_registries_get_a_clear_error_and_leave_nothing() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pulled");
        const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
        let tar = plain_tar();
        let (long_manifest, long_config) = image_of(&tar, tar.len() as u64);
        let esc = escaping_tar();
        let (esc_manifest, esc_config) = image_of(&esc, esc.len() as u64);
        let blobs: Vec<(String, Vec<u8>)> = vec![
            (sha(&long_config), long_config.clone()),
            // The layer served with 100 bytes more than its descriptor says.
            (sha(&tar), [tar.clone(), vec![0u8; 100]].concat()),
            (sha(&esc_config), esc_config.clone()),
            (sha(&esc), esc.clone()),
        ];
        serve(5100, move |req| {
            let path = req.path.as_str();
            let blob = |d: &str| blobs.iter().find(|(k, _)| k == d).map(|(_, v)| v.clone());
            match path {
                "/v2/" => ok("application/json", b"{}".to_vec()),
                "/v2/h/big/manifests/1" => ok(MANIFEST, vec![b' '; 5 << 20]),
                "/v2/h/long/manifests/1" => ok(MANIFEST, long_manifest.clone()),
                "/v2/h/escape/manifests/1" => ok(MANIFEST, esc_manifest.clone()),
                "/v2/h/loop/manifests/1" => Answer {
                    head: "HTTP/1.1 307 Temporary Redirect\r\nLocation: /v2/h/loop/manifests/1\r\nContent-Length: 0\r\n".into(),
                    body: vec![],
                    drip: false,
                },
                "/v2/h/drip/manifests/1" => Answer {
                    drip: true,
                    ..ok(MANIFEST, long_manifest.clone())
                },
                p if p.starts_with("/v2/h/long/manifests/sha256:") => {
                    ok(MANIFEST, long_manifest.clone())
                }
                p => match p.rsplit_once("/blobs/").and_then(|(_, d)| blob(d)) {
                    Some(b) => ok("application/octet-stream", b),
                    None => {
                        let body = br#"{"errors":[{"code":"BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#.to_vec();
                        Answer {
                            head: format!("HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: {}\r\n", body.len()),
                            body,
                            drip: false,
                        }
                    }
                },
            }
        });
        let args = [
            "--insecure-registry",
            "127.0.0.1:5100",
            "--registry-timeout",
            "1",
        ];
        let refused = |image: &str, words: &[&str]| {
            let t = Instant::now();
            let (code, _, err) = pull(&root, &format!("127.0.0.1:5100/{image}"), &args);
            assert_ne!(code, 0, "{image}");
            for w in words {
                assert!(err.contains(w), "{image}: {w:?} not in {err}");
            }
            assert!(no_images(&root), "{image}");
            assert!(
                entries(&root.join("store/tmp")).is_empty(),
                "{image}: temp files left"
            );
            t.elapsed()
        };
        refused(
            "h/big:1",
            &["manifest h/big:1", "manifests are read up to 4194304 bytes"],
        );
        refused(
            "h/long:1",
            &[&format!(
                "blob {}: longer than the {} bytes its descriptor says",
                sha(&tar),
                tar.len()
            )],
        );
        let pinned = format!("h/long@sha256:{}", "1".repeat(64));
        refused(&pinned, &["the registry's manifest hashes to"]);
        refused("h/loop:1", &["redirect"]);
        let took = refused("h/drip:1", &["manifest h/drip:1", "imeout"]);
        assert!(
            took < Duration::from_secs(10),
            "a dripping server held a pull {took:?}"
        );

        // A layer that escapes its root passes the pull (its bytes are what
        // the manifest says) and is refused when unpacked, with nothing
        // written outside.
        let (code, _, err) = pull(&root, "127.0.0.1:5100/h/escape:1", &args);
        assert_eq!(code, 0, "{err}");
        let store = agent::image::ImageStore::open(&root.join("store")).unwrap();
        let e = store.resolve("127.0.0.1:5100/h/escape:1").unwrap_err();
        assert!(
            matches!(e, agent::image::ImageError::HostileEntry { .. }),
            "{e}"
        );
        assert!(
            !named_below(dir.path(), "escaped-by-layer"),
            "the layer wrote outside its root"
        );
    });
}

/// A proxy on 127.0.0.1:`port` in front of `upstream` that, while `cut` is
/// set, breaks a connection off once it has carried `after` bytes of
/// answers to blob requests.
fn cutting_proxy(port: u16, upstream: String, after: usize, cut: Arc<AtomicBool>) {
    let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
    std::thread::spawn(move || {
        for client in l.incoming().flatten() {
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let blob = Arc::new(AtomicBool::new(false));
            let (mut c_in, mut s_out) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            let b = blob.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 16 << 10];
                while let Ok(n) = c_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if buf[..n].windows(14).any(|w| w == b"/blobs/sha256:") {
                        b.store(true, Ordering::SeqCst);
                    }
                    if s_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = s_out.shutdown(Shutdown::Write);
            });
            let cut = cut.clone();
            std::thread::spawn(move || {
                let (mut s_in, mut c_out) = (server, client);
                let mut carried = 0;
                let mut buf = [0u8; 16 << 10];
                while let Ok(n) = s_in.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if blob.load(Ordering::SeqCst) && cut.load(Ordering::SeqCst) {
                        carried += n;
                        if carried > after {
                            let _ = c_out.write_all(&buf[..n / 2]);
                            let _ = c_out.shutdown(Shutdown::Both);
                            let _ = s_in.shutdown(Shutdown::Both);
                            return;
                        }
                    }
                    if c_out.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = c_out.shutdown(Shutdown::Write);
            });
        }
    });
}

#[test]
fn a_registry_that_dies_mid_blob_leaves_nothing_and_the_next_pull_succeeds() {
    if !require() || !tools() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("registry-cut");
        let reg = Registry::with_busybox(5000, &fx);
        let cut = Arc::new(AtomicBool::new(true));
        cutting_proxy(5101, reg.addr.clone(), 64 << 10, cut.clone());
        let root = fx.dir.path().join("pulled");
        let image = "127.0.0.1:5101/test/busybox:1";
        let args = ["--insecure-registry", "127.0.0.1:5101"];
        let (code, _, err) = pull(&root, image, &args);
        assert_ne!(code, 0);
        assert!(err.contains("reading sha256:"), "{err}");
        assert!(no_images(&root));
        assert!(entries(&root.join("store/tmp")).is_empty());
        // What was stored is only what was whole: the small JSON blobs, not
        // the layer.
        let stored = entries(&root.join("store/images/blobs/sha256"));
        let total: u64 = stored
            .iter()
            .map(|b| {
                std::fs::metadata(root.join("store/images/blobs/sha256").join(b))
                    .unwrap()
                    .len()
            })
            .sum();
        assert!(total < 64 << 10, "{stored:?}: {total} bytes");
        // The registry back: the same pull succeeds, fetching what it lacks.
        cut.store(false, Ordering::SeqCst);
        let (code, out, err) = pull(&root, image, &args);
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with(&format!("pulled {image} sha256:")), "{out}");
        let store = agent::image::ImageStore::open(&root.join("store")).unwrap();
        assert!(store.resolve(image).unwrap().layers[0]
            .join("bin/busybox")
            .exists());
    });
}

#[test]
fn a_slow_registry_holds_up_no_other_pod() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("registry-slow");
        let tar = plain_tar();
        let (manifest, _) = image_of(&tar, tar.len() as u64);
        // The manifest a byte every 300 ms: a pull that takes minutes.
        serve(5104, move |req| match req.path.as_str() {
            "/v2/" => ok("application/json", b"{}".to_vec()),
            _ => Answer {
                drip: true,
                ..ok(
                    "application/vnd.oci.image.manifest.v1+json",
                    manifest.clone(),
                )
            },
        });
        let (pods, state, state_s) = fx.agent_dirs();
        // One start worker: a pull on it would hold every other start.
        let agent = pulling_agent(
            &fx,
            &pods,
            &state,
            "127.0.0.1:5104",
            &["--parallel-starts", "1"],
        );
        let pod = |name: &str, image: &str| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  containers:\n  - {{name: c, image: '{image}', imagePullPolicy: IfNotPresent, command: [sleep, '100000']}}\n"
            )
        };
        put_manifest(&pods, "slow.yaml", &pod("slow", "127.0.0.1:5104/h/slow:1"));
        let slow = || pod_status(&state_s, "slow")["containers"][0].clone();
        assert!(eventually(Duration::from_secs(20), || slow()["state"] == "Waiting"));
        put_manifest(&pods, "fast.yaml", &pod("fast", "busybox:latest"));
        assert!(
            eventually(Duration::from_secs(20), || pod_status(&state_s, "fast")
                ["containers"][0]["state"]
                == "Running"),
            "{:#}",
            raw_status(&state_s)
        );
        // The slow pull is still going: its container is being created.
        assert_eq!(slow()["state"], "Waiting", "{:#}", slow());
        assert!(slow()["reason"].is_null(), "{:#}", slow());
        // An exiting agent waits for starts, not for a pull that has made
        // nothing yet.
        let t = Instant::now();
        drop(agent);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "the agent took {:?} to exit during a pull",
            t.elapsed()
        );
    });
}
