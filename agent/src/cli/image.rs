//! `podctl image pull|import|import-rootfs|ls|rm`: the local image store, used
//! directly (as root), without the agent.

use std::io::Write;
use std::path::PathBuf;

use crate::image::ImageStore;

use super::Outcome;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The agent's root dir; images live in its `images/` and `layers/`.
    #[arg(long, default_value = "/var/lib/podagent", global = true)]
    pub root_dir: PathBuf,
    #[command(subcommand)]
    pub command: Command,
}

/// How `pull` reaches registries (the agent's flags of the same names).
#[derive(Debug, Clone, clap::Args)]
pub struct RegistryArgs {
    /// Credentials, Docker's `config.json` format (`auths`); refused when
    /// group or others may read it.
    #[arg(long, default_value = "/etc/podagent/auth.json")]
    pub auth_file: PathBuf,
    /// Per-registry CAs: `DIR/<host[:port]>/ca.crt` (Docker's `certs.d`).
    #[arg(long, default_value = "/etc/podagent/certs.d")]
    pub certs_dir: PathBuf,
    /// A registry (`host[:port]`) spoken to over plain HTTP (repeatable).
    #[arg(long = "insecure-registry", value_name = "HOST[:PORT]")]
    pub insecure: Vec<String>,
    /// Seconds to connect, and between bytes, before a registry is given up.
    #[arg(long, default_value_t = 30)]
    pub registry_timeout: u64,
    /// A mirror of a registry, `REGISTRY=MIRROR` (`docker.io=cache.site:5000`),
    /// tried before it; repeatable, tried in the order given, the registry
    /// itself last.
    #[arg(long = "registry-mirror", value_name = "REGISTRY=HOST[:PORT]", value_parser = parse_mirror)]
    pub mirrors: Vec<(String, String)>,
}

fn parse_mirror(s: &str) -> Result<(String, String), String> {
    let (registry, mirror) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: REGISTRY=MIRROR expected (docker.io=cache:5000)"))?;
    let host = |h: &str| -> Result<String, String> {
        let h = h.trim();
        let ok = !h.is_empty()
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b));
        if !ok {
            return Err(format!("{h:?} is not a host[:port]"));
        }
        Ok(crate::image::reference::canonical_registry(h))
    };
    Ok((host(registry)?, host(mirror)?))
}

impl RegistryArgs {
    pub fn config(
        &self,
    ) -> Result<crate::image::registry::RegistryConfig, crate::image::registry::RegistryError> {
        Ok(crate::image::registry::RegistryConfig {
            insecure: self.insecure.clone(),
            certs_dir: self.certs_dir.clone(),
            auth: crate::image::registry::AuthFile::load(&self.auth_file)?,
            timeout: std::time::Duration::from_secs(self.registry_timeout.max(1)),
            mirrors: self.mirrors.iter().fold(
                std::collections::BTreeMap::new(),
                |mut m: std::collections::BTreeMap<String, Vec<String>>, (r, h)| {
                    m.entry(r.clone()).or_default().push(h.clone());
                    m
                },
            ),
        })
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Pull an image from its registry (`busybox`, `registry:5000/app:v1`,
    /// `app@sha256:…`).
    Pull {
        reference: String,
        #[command(flatten)]
        registry: RegistryArgs,
    },
    /// Import an OCI image layout directory or an oci-archive tar.
    Import {
        path: PathBuf,
        /// Name the image (for layouts that carry only a tag).
        #[arg(long)]
        name: Option<String>,
    },
    /// Make a one-layer image from a directory, as `docker import` does.
    ImportRootfs {
        dir: PathBuf,
        reference: String,
        /// The image's default command (its `Cmd`).
        #[arg(long, num_args = 1.., allow_hyphen_values = true, value_name = "ARG")]
        cmd: Vec<String>,
    },
    /// List the images, with the pods that use them (when the agent
    /// answers).
    Ls {
        #[command(flatten)]
        api: super::Api,
    },
    /// Remove an image (refused while a container uses it).
    Rm { reference: String },
    /// Remove every image no pod of the agent's uses and no container has
    /// mounted. Refused when the agent does not answer, unless --force
    /// (then only the mounted images are kept).
    Prune {
        #[command(flatten)]
        api: super::Api,
        #[arg(long)]
        force: bool,
    },
}

/// The pods (`namespace/name`) using each image, by normalised reference,
/// from the agent's status.
fn pods_by_image(
    api: &super::Api,
) -> Result<std::collections::BTreeMap<String, Vec<String>>, String> {
    let status = api.get_json("/v1/status")?;
    let mut out: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for p in status["pods"].as_array().into_iter().flatten() {
        let pod = format!(
            "{}/{}",
            p["namespace"].as_str().unwrap_or(""),
            p["name"].as_str().unwrap_or("")
        );
        for image in p["images"].as_array().into_iter().flatten() {
            let Some(image) = image.as_str() else {
                continue;
            };
            let key =
                crate::image::normalise_reference(image).unwrap_or_else(|_| image.to_string());
            let users = out.entry(key).or_default();
            if !users.contains(&pod) {
                users.push(pod.clone());
            }
        }
    }
    Ok(out)
}

/// `podctl image pull`'s progress on a terminal: a line per blob (its
/// digest, bytes so far of its size, its rate), redrawn in place at most ten
/// times a second.
struct ProgressBar {
    state: std::sync::Mutex<BarState>,
}

/// One blob's line.
struct BarBlob {
    digest: String,
    size: u64,
    done: u64,
    started: std::time::Instant,
    present: bool,
}

struct BarState {
    /// In the order first seen.
    blobs: Vec<BarBlob>,
    drawn_lines: usize,
    last: Option<std::time::Instant>,
}

impl ProgressBar {
    fn new() -> ProgressBar {
        ProgressBar {
            state: std::sync::Mutex::new(BarState {
                blobs: Vec::new(),
                drawn_lines: 0,
                last: None,
            }),
        }
    }

    fn update(&self, p: crate::image::BlobProgress<'_>) {
        {
            let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
            match st.blobs.iter_mut().find(|b| b.digest == p.digest) {
                Some(b) => b.done = p.done,
                None => st.blobs.push(BarBlob {
                    digest: p.digest.to_string(),
                    size: p.size,
                    done: p.done,
                    started: std::time::Instant::now(),
                    present: p.present,
                }),
            }
        }
        self.draw(false);
    }

    fn draw(&self, last: bool) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = std::time::Instant::now();
        if !last
            && st
                .last
                .is_some_and(|t| now - t < std::time::Duration::from_millis(100))
        {
            return;
        }
        st.last = Some(now);
        let mib = |b: u64| b as f64 / (1u64 << 20) as f64;
        let mut text = String::new();
        if st.drawn_lines > 0 {
            text.push_str(&format!("\x1b[{}A", st.drawn_lines));
        }
        for b in &st.blobs {
            let (size, done) = (b.size, b.done);
            let short: String = b
                .digest
                .trim_start_matches("sha256:")
                .chars()
                .take(12)
                .collect();
            let line = if b.present {
                format!("{short}  {:>8.1} MiB  already present", mib(size))
            } else {
                let secs = (now - b.started).as_secs_f64().max(1e-3);
                let state = if done >= size { "done" } else { "" };
                format!(
                    "{short}  {:>8.1} / {:.1} MiB  {:>7.1} MiB/s  {state}",
                    mib(done),
                    mib(size),
                    mib(done) / secs
                )
            };
            text.push_str(&format!("\x1b[2K{line}\n"));
        }
        st.drawn_lines = st.blobs.len();
        let _ = std::io::stderr().write_all(text.as_bytes());
    }
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let store = match ImageStore::open(&args.root_dir.join("store")) {
        Ok(s) => s,
        Err(e) => return fail(err, &e),
    };
    let result = match &args.command {
        Command::Pull {
            reference,
            registry,
        } => {
            let config = match registry.config() {
                Ok(c) => c,
                Err(e) => return fail(err, &crate::image::ImageError::Registry(e)),
            };
            let client = crate::image::registry::Client::new(config);
            let t = std::time::Instant::now();
            // On a terminal, a line per blob; elsewhere (a log, a pipe) quiet.
            let bar = std::io::IsTerminal::is_terminal(&std::io::stderr()).then(ProgressBar::new);
            let report = |p: crate::image::BlobProgress<'_>| {
                if let Some(b) = &bar {
                    b.update(p);
                }
            };
            let result = store.pull(&client, reference, bar.as_ref().map(|_| &report as _));
            if let Some(b) = &bar {
                b.draw(true);
            }
            result.map(|i| {
                let _ = writeln!(
                    out,
                    "pulled {} {} ({} bytes in {:.2} s)",
                    i.reference,
                    i.digest,
                    i.size,
                    t.elapsed().as_secs_f64()
                );
            })
        }
        Command::Import { path, name } => store.import(path, name.as_deref()).map(|infos| {
            for i in infos {
                let _ = writeln!(out, "imported {} {}", i.reference, i.digest);
            }
        }),
        Command::ImportRootfs {
            dir,
            reference,
            cmd,
        } => store
            .import_rootfs(dir, reference, cmd.clone())
            .map(|i| drop(writeln!(out, "imported {} {}", i.reference, i.digest))),
        Command::Ls { api } => store.list().map(|list| {
            let pods = pods_by_image(api);
            if let Err(e) = &pods {
                let _ = writeln!(err, "podctl image: pods not shown: {e}");
            }
            let _ = writeln!(
                out,
                "{:<40} {:<14} {:>10}  PODS",
                "REFERENCE", "DIGEST", "SIZE"
            );
            for i in list {
                let short = i
                    .digest
                    .trim_start_matches("sha256:")
                    .chars()
                    .take(12)
                    .collect::<String>();
                let users = match &pods {
                    Ok(p) => p.get(&i.reference).map_or("-".into(), |u| u.join(",")),
                    Err(_) => "?".into(),
                };
                let _ = writeln!(
                    out,
                    "{:<40} {:<14} {:>10}  {users}",
                    i.reference, short, i.size
                );
            }
        }),
        Command::Prune { api, force } => {
            let pods = match pods_by_image(api) {
                Ok(p) => p,
                Err(e) if !force => {
                    let _ = writeln!(
                        err,
                        "podctl image prune: the agent did not answer ({e}): its pods' images are not known; --force keeps only the images of mounted containers"
                    );
                    return Outcome::Invalid;
                }
                Err(_) => Default::default(),
            };
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            store.list().and_then(|list| {
                let mut freed = 0;
                for i in list {
                    let layers = store.layer_dirs(&i.reference).unwrap_or_default();
                    if pods.contains_key(&i.reference)
                        || !overlays_using(&mountinfo, &layers).is_empty()
                    {
                        continue;
                    }
                    store.remove(&i.reference, &|_| None)?;
                    freed += i.size;
                    let _ = writeln!(out, "removed {} {}", i.reference, i.digest);
                }
                let _ = writeln!(out, "{freed} bytes of images removed");
                Ok(())
            })
        }
        // No container runs without the agent, which will answer "in use"
        // from its state; until then nothing holds an image.
        Command::Rm { reference } => {
            // In use: a container's overlay (any agent's, on this node) has
            // one of the image's layers among its lower dirs.
            let layers = store.layer_dirs(reference).unwrap_or_default();
            let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            let users = overlays_using(&mountinfo, &layers);
            store
                .remove(reference, &|_| {
                    users
                        .first()
                        .map(|u| format!("the container whose root is {u}"))
                })
                .map(drop)
        }
    };
    match result {
        Ok(()) => Outcome::Ok,
        Err(e) => fail(err, &e),
    }
}

fn fail(err: &mut dyn Write, e: &dyn std::error::Error) -> Outcome {
    let _ = writeln!(err, "podctl image: {}", crate::error_chain(e));
    Outcome::Invalid
}

pub use crate::image::gc::overlays_using;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overlay_with_the_layer_below_uses_it() {
        let info = "35 24 0:31 / /run/c/rootfs rw,relatime shared:1 - overlay overlay rw,lowerdir=/s/layers/sha256/bb:/s/layers/sha256/aa,upperdir=/u,workdir=/w\n\
                    36 24 0:32 / /other rw - tmpfs tmpfs rw\n";
        let aa = std::path::PathBuf::from("/s/layers/sha256/aa");
        let cc = std::path::PathBuf::from("/s/layers/sha256/cc");
        assert_eq!(overlays_using(info, &[aa]), ["/run/c/rootfs"]);
        assert!(overlays_using(info, &[cc]).is_empty());
    }
}
