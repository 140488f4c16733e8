//! Pulls from a real registry: Debian's `docker-registry` (the CNCF
//! distribution registry) on 127.0.0.1, inside a network namespace of the
//! test's own, with images pushed by `skopeo copy` from the image store's
//! own OCI layout; anonymous over plain HTTP, then behind htpasswd basic
//! auth, behind a token server, through mirrors; and servers of the test's
//! own for what no real registry does (hostile answers, a connection cut
//! mid-blob). As root; outside CI a missing tool skips, with CI=true it fails.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

#[path = "../support/mod.rs"]
mod support;

mod gc;
mod hostile;
mod pulls;
mod token;

use support::{eventually, podctl};

pub fn tools() -> bool {
    let missing: Vec<&str> = ["docker-registry", "skopeo", "htpasswd", "openssl"]
        .into_iter()
        .filter(|t| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {t}")])
                .stdout(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true and {missing:?} missing (scripts/setup installs them)"
    );
    eprintln!("skipping: {missing:?} missing");
    false
}

/// A registry serving from `dir`, killed and its files removed on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    pub addr: String,
    dir: tempfile::TempDir,
    pub data: PathBuf,
}

impl Registry {
    pub fn start(port: u16, htpasswd: Option<(&str, &str)>) -> Registry {
        Registry::start_with(port, htpasswd, None)
    }

    /// With TLS from `(certificate, key)` files when given.
    pub fn start_with(
        port: u16,
        htpasswd: Option<(&str, &str)>,
        tls: Option<(&Path, &Path)>,
    ) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let auth = htpasswd.map_or(String::new(), |(user, password)| {
            let file = dir.path().join("htpasswd");
            let ok = Command::new("htpasswd")
                .args(["-Bbc"])
                .arg(&file)
                .args([user, password])
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(ok.success());
            format!(
                "auth: {{htpasswd: {{realm: test, path: {}}}}}\n",
                file.display()
            )
        });
        Registry::start_in(dir, port, &auth, tls)
    }

    /// In `dir`, with `auth` (YAML of the registry's `auth:` section, or
    /// nothing). Its access log is kept in `dir` (see [`Registry::gets`]).
    pub fn start_in(
        dir: tempfile::TempDir,
        port: u16,
        auth: &str,
        tls: Option<(&Path, &Path)>,
    ) -> Registry {
        let data = dir.path().join("data");
        let addr = format!("127.0.0.1:{port}");
        let tls = tls.map_or(String::new(), |(cert, key)| {
            format!(
                ", tls: {{certificate: {}, key: {}}}",
                cert.display(),
                key.display()
            )
        });
        let config = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}, delete: {{enabled: true}}}}\nhttp: {{addr: '{addr}'{tls}}}\n{auth}",
            data.display()
        );
        let path = dir.path().join("config.yml");
        std::fs::write(&path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let r = Registry {
            child,
            addr,
            dir,
            data,
        };
        assert!(
            eventually(Duration::from_secs(20), || std::net::TcpStream::connect(
                &r.addr
            )
            .is_ok()),
            "the registry did not listen on {}",
            r.addr
        );
        r
    }

    /// How many `GET /v2/<path>` the registry answered with 200, from its
    /// access log.
    pub fn gets(&self, path: &str) -> usize {
        let log = std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default();
        let want = format!("\"GET /v2/{path} HTTP/1.1\" 200 ");
        log.lines().filter(|l| l.contains(&want)).count()
    }

    /// `skopeo copy` of `image` from the store's layout to `repo:tag` here.
    pub fn push(&self, store_images: &Path, image: &str, target: &str, creds: Option<&str>) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(creds) = creds {
            c.args(["--dest-creds", creds]);
        }
        let out = c
            .arg(format!("oci:{}:{image}", store_images.display()))
            .arg(format!("docker://{}/{target}", self.addr))
            .output()
            .unwrap();
        assert!(out.status.success(), "skopeo: {out:?}");
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// On 127.0.0.1:`port`, with the fixture's busybox pushed as
    /// `test/busybox:1`.
    pub fn with_busybox(port: u16, fx: &support::fixture::Fixture) -> Registry {
        let r = Registry::start(port, None);
        r.push(
            &fx.dir.path().join("store/images"),
            "busybox:latest",
            "test/busybox:1",
            None,
        );
        r
    }
}

/// The fixture's agent with `--pull-images` from `registry` over plain
/// HTTP, without credentials and without networking, and `extra` options.
pub fn pulling_agent(
    fx: &support::fixture::Fixture,
    pods: &Path,
    state: &Path,
    registry: &str,
    extra: &[&str],
) -> support::fixture::Running {
    let auth = fx.dir.path().join("no-auth.json").display().to_string();
    let mut args = vec![
        "--no-network",
        "--pull-images",
        "--insecure-registry",
        registry,
        "--auth-file",
        &auth,
    ];
    args.extend_from_slice(extra);
    support::fixture::Running(support::fixture::spawn_agent(fx, pods, state, &args))
}

/// A credentials file (mode 0600) with `user:password` for `registry`.
pub fn write_auth(path: &Path, registry: &str, user_password: &str) {
    use base64::Engine;
    use std::os::unix::fs::PermissionsExt;
    let b64 = base64::engine::general_purpose::STANDARD.encode(user_password);
    std::fs::write(
        path,
        format!(r#"{{"auths": {{"{registry}": {{"auth": "{b64}"}}}}}}"#),
    )
    .unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// Credentials checked as a node's are: pulls of `image` into `root` with
/// no credentials in `auth`, with `user:wrong`, then with `user:right`. The
/// first two fail with `without` and `refused` in their errors, the last
/// pulls; neither password is in any output.
#[allow(clippy::too_many_arguments)]
pub fn credentials_checked(
    root: &Path,
    image: &str,
    registry: &str,
    auth: &Path,
    (user, wrong, right): (&str, &str, &str),
    without: &[&str],
    refused: &[&str],
) {
    let auth_s = auth.display().to_string();
    let args = ["--insecure-registry", registry, "--auth-file", &auth_s];
    let secret_free = |out: &str, err: &str| {
        for p in [wrong, right] {
            assert!(
                !out.contains(p) && !err.contains(p),
                "a password in {out} {err}"
            );
        }
    };
    let _ = std::fs::remove_file(auth);
    let (code, out, err) = pull(root, image, &args);
    assert_ne!(code, 0);
    assert!(without.iter().all(|w| err.contains(w)), "{err}");
    secret_free(&out, &err);
    write_auth(auth, registry, &format!("{user}:{wrong}"));
    let (code, out, err) = pull(root, image, &args);
    assert_ne!(code, 0);
    assert!(refused.iter().all(|w| err.contains(w)), "{err}");
    secret_free(&out, &err);
    write_auth(auth, registry, &format!("{user}:{right}"));
    let (code, out, err) = pull(root, image, &args);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with(&format!("pulled {image} sha256:")), "{out}");
    secret_free(&out, &err);
}

/// `openssl ARGS` in `dir`, fed `stdin`: its output (it must succeed).
pub fn openssl(dir: &Path, args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let mut c = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    if let Some(input) = stdin {
        c.stdin.take().unwrap().write_all(input).unwrap();
    }
    drop(c.stdin.take());
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {out:?}");
    out.stdout
}

/// The references a store holds, in order.
pub fn references(store: &agent::image::ImageStore) -> Vec<String> {
    store
        .list()
        .unwrap()
        .into_iter()
        .map(|i| i.reference)
        .collect()
}

/// `podctl image pull` into the store under `root`.
pub fn pull(root: &Path, reference: &str, extra: &[&str]) -> (i32, String, String) {
    let root = root.display().to_string();
    let mut args = vec!["image", "--root-dir", root.as_str(), "pull", reference];
    args.extend_from_slice(extra);
    podctl(&args)
}
