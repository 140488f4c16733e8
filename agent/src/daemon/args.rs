//! `podagent run`'s options: the command line, and the `--config` file that
//! stands for some of it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "/etc/pods")]
    pub pods_dir: PathBuf,
    /// Read manifests in subdirectories of the pods dir too (to a depth of
    /// 8; hidden directories are not read, symlinks only as
    /// `--pods-dir-link-root` says).
    #[arg(long)]
    pub pods_dir_recursive: bool,
    /// Symlinks in the pods dir (to files, and with `--pods-dir-recursive`
    /// to directories) are followed only when they lead beneath this
    /// directory (default: the pods dir's real path).
    #[arg(long)]
    pub pods_dir_link_root: Option<PathBuf>,
    #[arg(long, default_value = "/run/podagent")]
    pub state_dir: PathBuf,
    /// Images and persistent data.
    #[arg(long, default_value = "/var/lib/podagent")]
    pub root_dir: PathBuf,
    #[arg(long, default_value = "podagent")]
    pub cgroup_root: String,
    #[arg(long, default_value = "10.88.0.0/16")]
    pub pod_cidr: String,
    #[arg(long, default_value = "podbr0")]
    pub bridge: String,
    /// Run pods without networking (each gets a namespace with loopback only).
    #[arg(long)]
    pub no_network: bool,
    /// Stop every pod when the agent exits (default: leave them running).
    #[arg(long)]
    pub stop_pods_on_exit: bool,
    /// Containers started at once, each on a thread of its own: a slow
    /// start holds up no other pod.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub parallel_starts: u16,
    /// Seconds between full resyncs of the pods directory.
    #[arg(long, default_value_t = 60)]
    pub resync_secs: u64,
    /// The API's Unix socket (default: `podagent.sock` in the state dir).
    #[arg(long)]
    pub api_socket: Option<PathBuf>,
    /// A group (name or gid) whose members may use the API (socket mode
    /// 0660); by default it is root's alone (0600).
    #[arg(long)]
    pub api_group: Option<String>,
    /// Serve `/metrics` over TCP at ADDR:PORT for Prometheus (off by
    /// default; unauthenticated: bind an address only the scraper reaches,
    /// e.g. 127.0.0.1:10255).
    #[arg(long)]
    pub metrics_address: Option<std::net::SocketAddr>,
    /// Serve a read-only Kubernetes API (pods, events, logs) over TLS at
    /// ADDR:PORT for kubectl and the Kubernetes client libraries, e.g.
    /// 127.0.0.1:6443 (off by default). Clients need the token under the
    /// root dir's `kube-api/`: `podctl kubeconfig` writes a kubeconfig.
    #[arg(long)]
    pub kube_api_address: Option<std::net::SocketAddr>,
    /// Follow a git repository (https, ssh or file URL): its pods are run
    /// beside the pods dir's, each new commit checked whole, applied as one
    /// change, and reverted when a pod it changed is not Ready within
    /// --health-window.
    #[arg(long)]
    pub git_repo: Option<String>,
    /// The branch or tag followed.
    #[arg(long, default_value = "main")]
    pub git_ref: String,
    /// The repository's directory of pods (default: its top); its
    /// `nodes/<node-name>/` is this node's own, other nodes' are skipped.
    #[arg(long, value_parser = parse_git_path)]
    pub git_path: Option<String>,
    /// Seconds between fetches (also `podctl sync now`).
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    pub git_interval: u64,
    /// Seconds a new commit's changed pods have to be Ready before it is
    /// reverted.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..))]
    pub health_window: u64,
    /// Apply only commits signed with an SSH key of this allowed-signers
    /// file (ssh-keygen's format, as git's `gpg.ssh.allowedSignersFile`);
    /// an unsigned or badly signed commit is refused.
    #[arg(long)]
    pub git_allowed_signers: Option<PathBuf>,
    /// This node's name in the repository's `nodes/` (default: the host
    /// name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// The CPU manager's policy, as the kubelet's `--cpu-manager-policy`:
    /// `none`, or `static` (whole CPUs of their own for the containers of
    /// Guaranteed pods with whole-number CPU requests).
    #[arg(long, value_enum, default_value_t = CpuManagerPolicy::None)]
    pub cpu_manager_policy: CpuManagerPolicy,
    /// CPUs never given to a container of its own (the system's), as
    /// `0-1,4`; required by the static policy.
    #[arg(long)]
    pub reserved_cpus: Option<String>,
    /// The node's address, the downward API's `status.hostIP` and the
    /// status's `hostIP` (as the kubelet's `--node-ip`); by default the
    /// address of the interface the default route leaves by.
    #[arg(long, value_parser = parse_ipv4)]
    pub node_ip: Option<String>,
    /// What pods may ask for (privileged containers, unsafe sysctls) and
    /// the default pids limit; `podctl validate` takes the same options.
    #[command(flatten)]
    pub policy: crate::node::Policy,
    /// Pull images from their registries by each container's
    /// `imagePullPolicy`, as the kubelet does (`:latest` or no tag means
    /// Always). Off by default for now: without it only the store's images
    /// run, whatever the policy.
    #[arg(long)]
    pub pull_images: bool,
    /// Images pulled at once (the kubelet's `maxParallelImagePulls`); each
    /// image is pulled once for all the containers waiting on it, and a
    /// pull holds up no start of an image already present.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    pub max_parallel_image_pulls: u16,
    /// Image GC starts when the store's filesystem is this full (percent;
    /// 100 turns it off), as the kubelet's `--image-gc-high-threshold`.
    #[arg(long, default_value_t = 85, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub image_gc_high_threshold: u8,
    /// ... and removes unused images, least recently used first, until it
    /// is this full.
    #[arg(long, default_value_t = 80, value_parser = clap::value_parser!(u8).range(0..=100))]
    pub image_gc_low_threshold: u8,
    /// Seconds an image is kept after it was pulled or last used, however
    /// full the disk (the kubelet's `imageMinimumGCAge`).
    #[arg(long, default_value_t = 120)]
    pub image_minimum_gc_age: u64,
    /// How images are pulled: credentials, CAs, insecure registries.
    #[command(flatten)]
    pub registry: crate::cli::image::RegistryArgs,
    /// How events are logged on stderr: `text` lines or one JSON object a
    /// line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A YAML file of these options by their long names (`pods-dir: /srv/pods`,
    /// `stop-pods-on-exit: true`); options on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

fn parse_git_path(s: &str) -> Result<String, String> {
    let p = std::path::Path::new(s.trim_end_matches('/'));
    let plain = p
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if s.starts_with('-') || !plain {
        return Err(format!(
            "{s:?}: a relative path inside the repository, without `..`"
        ));
    }
    Ok(p.display().to_string())
}

fn parse_ipv4(s: &str) -> Result<String, String> {
    s.parse::<std::net::Ipv4Addr>()
        .map(|a| a.to_string())
        .map_err(|_| format!("{s:?} is not an IPv4 address"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuManagerPolicy {
    None,
    Static,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

impl Args {
    pub fn api_socket(&self) -> PathBuf {
        self.api_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("podagent.sock"))
    }

    /// Image GC's thresholds; the low one must be below the high one.
    pub fn image_gc_policy(&self) -> Result<crate::image::gc::Policy, String> {
        let (high, low) = (self.image_gc_high_threshold, self.image_gc_low_threshold);
        if low >= high {
            return Err(format!(
                "--image-gc-low-threshold {low} must be below --image-gc-high-threshold {high}"
            ));
        }
        Ok(crate::image::gc::Policy {
            high,
            low,
            min_age: std::time::Duration::from_secs(self.image_minimum_gc_age),
        })
    }

    /// The node's seccomp profiles (`Localhost` profiles are relative to
    /// it): `seccomp` under the root dir.
    pub fn seccomp_dir(&self) -> PathBuf {
        crate::node::seccomp_dir(&self.root_dir)
    }
}

/// A config file that cannot be used; nothing of it is applied.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}", path.display())]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("{}: {key}: not an option of podagent run", path.display())]
    UnknownOption { path: PathBuf, key: String },
    #[error("{}: {key}: {expected} expected, not {found}", path.display())]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
}

/// The command-line arguments a config file stands for, to be placed before
/// the real ones (later ones win). Unknown keys, and values of the wrong
/// type, are errors.
pub fn config_args(path: &Path) -> Result<Vec<String>, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let map: BTreeMap<String, serde_yaml::Value> =
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml {
            path: path.to_path_buf(),
            source,
        })?;
    let cmd = <Args as clap::Args>::augment_args(clap::Command::new("run"));
    let mut out = Vec::new();
    for (key, value) in map {
        let Some(arg) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
        else {
            return Err(ConfigError::UnknownOption {
                path: path.to_path_buf(),
                key,
            });
        };
        let takes_value = arg.get_action().takes_values();
        match (value, takes_value) {
            (serde_yaml::Value::Bool(true), false) => out.push(format!("--{key}")),
            (serde_yaml::Value::Bool(false), false) => {}
            (serde_yaml::Value::String(v), true) => out.extend([format!("--{key}"), v]),
            (serde_yaml::Value::Number(n), true) => out.extend([format!("--{key}"), n.to_string()]),
            // A repeatable option: a list of its values.
            (serde_yaml::Value::Sequence(items), true)
                if matches!(arg.get_action(), clap::ArgAction::Append) =>
            {
                for item in items {
                    let v = match item {
                        serde_yaml::Value::String(v) => v,
                        serde_yaml::Value::Number(n) => n.to_string(),
                        v => {
                            return Err(ConfigError::WrongType {
                                path: path.to_path_buf(),
                                key,
                                expected: "a list of values",
                                found: format!("{v:?}"),
                            })
                        }
                    };
                    out.extend([format!("--{key}"), v]);
                }
            }
            (v, _) => {
                return Err(ConfigError::WrongType {
                    path: path.to_path_buf(),
                    key,
                    expected: if takes_value {
                        "a value"
                    } else {
                        "true or false"
                    },
                    found: format!("{v:?}"),
                })
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args_of(yaml: &str) -> Result<Vec<String>, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yaml");
        std::fs::write(&path, yaml).unwrap();
        config_args(&path).map_err(|e| crate::error_chain(&e))
    }

    #[test]
    fn a_config_file_is_options_by_their_long_names() {
        assert_eq!(
            args_of(
                "pods-dir: /srv/pods\nstop-pods-on-exit: true\nno-network: false\nresync-secs: 5\n"
            ),
            Ok(vec![
                "--pods-dir".to_string(),
                "/srv/pods".into(),
                "--resync-secs".into(),
                "5".into(),
                "--stop-pods-on-exit".into(),
            ])
        );
    }

    #[test]
    fn a_repeatable_option_is_a_list() {
        assert_eq!(
            args_of("insecure-registry: [a:5000, b]\nregistry-mirror: [docker.io=m:5000]\n"),
            Ok(vec![
                "--insecure-registry".to_string(),
                "a:5000".into(),
                "--insecure-registry".into(),
                "b".into(),
                "--registry-mirror".into(),
                "docker.io=m:5000".into(),
            ])
        );
    }

    #[test]
    fn unknown_keys_and_wrong_types_are_errors_naming_the_key() {
        let e = args_of("pod-dir: /x\n").unwrap_err();
        assert!(
            e.ends_with("config.yaml: pod-dir: not an option of podagent run"),
            "{e}"
        );
        let e = args_of("config: other.yaml\n").unwrap_err();
        assert!(e.contains("config: not an option"), "{e}");
        let e = args_of("no-network: yes please\n").unwrap_err();
        assert!(e.contains("no-network: true or false expected"), "{e}");
        let e = args_of("pods-dir: [a, b]\n").unwrap_err();
        assert!(e.contains("pods-dir: a value expected"), "{e}");
        let e = args_of("insecure-registry: [{a: b}]\n").unwrap_err();
        assert!(
            e.contains("insecure-registry: a list of values expected"),
            "{e}"
        );
        let e = args_of("pods-dir: [unclosed\n").unwrap_err();
        assert!(e.contains("config.yaml: "), "{e}");
    }
}
