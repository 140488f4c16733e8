//! Image pulls from a local registry, side by side in one run: podagent
//! (`podctl image pull`), `skopeo copy docker://… oci:…` (the same work:
//! fetch, verify, store the blobs as they are) and `podman pull` where it is
//! installed (which also unpacks the layers into its storage); then a pod's
//! first instruction through the agent when its image must be pulled
//! (cold) and when it is present (warm).
//!
//! As root: `cargo bench -p agent --bench image_pull [-- RUNS LAYERS MIB]`
//! (default 5 runs of an image of busybox and 4 layers of 16 MiB, gzip).
//! Debian's `docker-registry` serves it on 127.0.0.1 inside a network
//! namespace the benchmark moves into first; every store is in its own
//! temporary directory. Peak RSS is each command's own (`getrusage` of a
//! process that runs only it).

#[path = "common/mod.rs"]
mod common;

use common::nap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::Digest;

fn sha(bytes: &[u8]) -> String {
    let h = sha2::Sha256::digest(bytes);
    format!(
        "sha256:{}",
        h.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, ms: &mut [f64], rss_kb: &mut [f64]) {
    ms.sort_by(f64::total_cmp);
    rss_kb.sort_by(f64::total_cmp);
    let rss = if rss_kb.is_empty() {
        String::new()
    } else {
        format!(
            "  peak RSS median {:>7.1} MB",
            percentile(rss_kb, 0.5) / 1024.0
        )
    };
    println!(
        "{name:<52} n={:<3} median {:>8.1} ms  p90 {:>8.1} ms{rss}",
        ms.len(),
        percentile(ms, 0.5),
        percentile(ms, 0.9),
    );
}

/// `--measure CMD ARGS...`: runs CMD as this process's only child and
/// prints its wall time (ns) and peak RSS (kB).
fn measure(cmd: &[String]) -> std::process::ExitCode {
    let t = Instant::now();
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .status()
        .unwrap();
    let wall = t.elapsed();
    let ru = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_CHILDREN).unwrap();
    println!("{} {}", wall.as_nanos(), ru.max_rss());
    if status.success() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::from(1)
    }
}

/// (ms, peak RSS kB) of `cmd` run through [`measure`], with `env`.
fn timed(cmd: &[String], env: &[(String, String)]) -> (f64, f64) {
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("--measure")
        .args(cmd)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()
        .unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let mut f = text.split_whitespace().map(|v| v.parse::<f64>().unwrap());
    (f.next().unwrap() / 1e6, f.next().unwrap())
}

/// A gzip tar layer of `files` (name, bytes, mode, symlink target):
/// (compressed, uncompressed).
fn layer(files: &[(String, Vec<u8>, Option<&str>)]) -> (Vec<u8>, Vec<u8>) {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data, link) in files {
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o755);
        match link {
            Some(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, name, target).unwrap();
            }
            None => {
                h.set_size(data.len() as u64);
                h.set_cksum();
                b.append_data(&mut h, name, &data[..]).unwrap();
            }
        }
    }
    let tar = b.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    (gz.finish().unwrap(), tar)
}

/// An OCI layout in `dir` holding `bench:1`: busybox, then `layers` layers
/// of `mib` MiB of random bytes each.
fn build_layout(dir: &Path, layers: usize, mib: usize) -> u64 {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| -> String {
        let d = sha(b);
        std::fs::write(blobs.join(&d[7..]), b).unwrap();
        d
    };
    let busybox = std::fs::read("/bin/busybox").unwrap();
    let mut files = vec![("bin/busybox".to_string(), busybox, None)];
    for a in ["sh", "touch", "sleep", "kill"] {
        files.push((format!("bin/{a}"), Vec::new(), Some("busybox")));
    }
    let mut all = vec![layer(&files)];
    let mut urandom = std::fs::File::open("/dev/urandom").unwrap();
    for i in 0..layers {
        let mut data = vec![0u8; mib << 20];
        std::io::Read::read_exact(&mut urandom, &mut data).unwrap();
        all.push(layer(&[(format!("data/{i}"), data, None)]));
    }
    let diff_ids: Vec<String> = all.iter().map(|(_, t)| sha(t)).collect();
    let descs: Vec<serde_json::Value> = all
        .iter()
        .map(|(gz, _)| {
            serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": put(gz), "size": gz.len()})
        })
        .collect();
    let config = serde_json::json!({
        "architecture": agent::image::arch(), "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": put(config.as_bytes()), "size": config.len()},
        "layers": descs,
    })
    .to_string();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": put(manifest.as_bytes()), "size": manifest.len(),
            "annotations": {"org.opencontainers.image.ref.name": "bench:1"}}],
    });
    std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    all.iter().map(|(gz, _)| gz.len() as u64).sum()
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.0.wait();
    }
}

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--measure") {
        return measure(&args[i + 1..]);
    }
    let mut nums = args.iter().filter_map(|a| a.parse::<usize>().ok());
    let runs = nums.next().unwrap_or(5);
    let layers = nums.next().unwrap_or(4);
    let mib = nums.next().unwrap_or(16);
    let which = |t: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let (Some(registry), Some(skopeo)) = (which("docker-registry"), which("skopeo")) else {
        eprintln!("the benchmark needs docker-registry and skopeo (scripts/setup)");
        return std::process::ExitCode::from(2);
    };
    if !common::private_network() {
        return std::process::ExitCode::from(2);
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let size = build_layout(&dir.join("layout"), layers, mib);
    let config = dir.join("registry.yml");
    std::fs::write(
        &config,
        format!(
            "version: 0.1\nlog: {{level: error, accesslog: {{disabled: true}}}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\nhttp: {{addr: '127.0.0.1:5000'}}\n",
            dir.join("registry").display()
        ),
    )
    .unwrap();
    let _registry = Killed(
        Command::new(&registry)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let up = (0..2000).any(|_| {
        nap(Duration::from_millis(10));
        std::net::TcpStream::connect("127.0.0.1:5000").is_ok()
    });
    assert!(up, "the registry did not listen");
    let image = "127.0.0.1:5000/bench/app:1";
    let pushed = Command::new(&skopeo)
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:bench:1", dir.join("layout").display()))
        .arg(format!("docker://{image}"))
        .status()
        .unwrap();
    assert!(pushed.success());
    println!(
        "image pull, {runs} runs, busybox + {layers} layers of {mib} MiB ({:.1} MB compressed), \
         {}",
        size as f64 / 1e6,
        common::machine()
    );

    // 1. The same pull, fresh stores, the tools alternating.
    let podctl = env!("CARGO_BIN_EXE_podctl").to_string();
    let podman_here = which("podman").is_some();
    let mut results: Vec<(String, Vec<f64>, Vec<f64>)> = vec![
        ("podagent: podctl image pull".into(), vec![], vec![]),
        ("skopeo copy docker:// → oci:".into(), vec![], vec![]),
    ];
    if podman_here {
        results.push(("podman pull (also unpacks)".into(), vec![], vec![]));
    }
    for run in 0..runs {
        let d = dir.join(format!("run-{run}"));
        std::fs::create_dir_all(&d).unwrap();
        let s = |p: &str| d.join(p).display().to_string();
        let mut cmds = vec![
            vec![
                podctl.clone(),
                "image".into(),
                "--root-dir".into(),
                s("podagent"),
                "pull".into(),
                image.into(),
                "--insecure-registry".into(),
                "127.0.0.1:5000".into(),
            ],
            vec![
                skopeo.clone(),
                "copy".into(),
                "--quiet".into(),
                "--src-tls-verify=false".into(),
                format!("docker://{image}"),
                format!("oci:{}:bench", s("skopeo")),
            ],
        ];
        let mut envs = vec![Vec::new(), Vec::new()];
        let podman = podman_here
            .then(|| common::Podman::new(&d.join("podman")))
            .flatten();
        if let Some(p) = &podman {
            let (argv, env) = p.argv(&["pull", "--quiet", "--tls-verify=false", image]);
            cmds.push(argv);
            envs.push(env);
        }
        // A different tool first each run.
        let n = cmds.len();
        for k in 0..n {
            let i = (k + run) % n;
            let (ms, rss) = timed(&cmds[i], &envs[i]);
            results[i].1.push(ms);
            results[i].2.push(rss);
        }
        drop(podman);
        let _ = std::fs::remove_dir_all(&d);
    }
    for (name, ms, rss) in &mut results {
        report(name, ms, rss);
    }
    // Already present: the manifest is read and nothing else.
    let warm = dir.join("warm").display().to_string();
    let pull = |root: &str| {
        vec![
            podctl.clone(),
            "image".into(),
            "--root-dir".into(),
            root.into(),
            "pull".into(),
            image.into(),
            "--insecure-registry".into(),
            "127.0.0.1:5000".into(),
        ]
    };
    timed(&pull(&warm), &[]);
    let (mut ms, mut rss): (Vec<f64>, Vec<f64>) =
        (0..runs).map(|_| timed(&pull(&warm), &[])).unzip();
    report("podagent: pull of an image present", &mut ms, &mut rss);

    // 2. A pod's first instruction through the agent, image pulled (cold:
    // a fresh store each run) and present (warm).
    let mut cold = Vec::new();
    let mut warm_start = Vec::new();
    for run in 0..runs {
        let d = dir.join(format!("agent-{run}"));
        let (pods, state, root, out) = (
            d.join("pods"),
            d.join("state"),
            d.join("root"),
            d.join("out"),
        );
        for p in [&pods, &state, &root, &out] {
            std::fs::create_dir_all(p).unwrap();
        }
        let cg = format!("podagent-bench-pull-{}-{run}", std::process::id());
        let agent = Killed(
            Command::new(env!("CARGO_BIN_EXE_podagent"))
                .arg("run")
                .arg("--pods-dir")
                .arg(&pods)
                .arg("--state-dir")
                .arg(&state)
                .arg("--root-dir")
                .arg(&root)
                .args([
                    "--cgroup-root",
                    &cg,
                    "--stop-pods-on-exit",
                    "--no-network",
                    "--pull-images",
                ])
                .args(["--insecure-registry", "127.0.0.1:5000"])
                .arg("--auth-file")
                .arg(d.join("none.json"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let socket = state.join("podagent.sock");
        let answers = (0..3000).any(|_| {
            nap(Duration::from_millis(10));
            agent::api::get(&socket, "/v1/status").is_ok()
        });
        assert!(answers, "the agent did not come up");
        for (name, times) in [("cold", &mut cold), ("warm", &mut warm_start)] {
            let o = out.join(name);
            std::fs::create_dir_all(&o).unwrap();
            let text = pod_manifest(name, image, &o);
            let t = Instant::now();
            let tmpf = pods.join(format!(".{name}.tmp"));
            std::fs::write(&tmpf, text).unwrap();
            std::fs::rename(&tmpf, pods.join(format!("{name}.yaml"))).unwrap();
            assert!(
                agent::runtime::wait_for_file(&o, "started", Duration::from_secs(120)),
                "{name} never started"
            );
            times.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        drop(agent);
        if let Ok(layout) = agent::cgroups::detect(Path::new("/proc/self/mountinfo")) {
            if let Ok(p) = agent::cgroups::CgroupPath::new(&cg) {
                let _ = layout.driver().remove(&p);
            }
        }
        let _ = std::fs::remove_dir_all(&d);
    }
    report(
        "podagent: file → first instruction, image pulled",
        &mut cold,
        &mut [],
    );
    report(
        "podagent: file → first instruction, image present",
        &mut warm_start,
        &mut [],
    );

    // 3. The same two pods through `podman kube play` (which returns once
    // they run), its storage fresh each run.
    if podman_here {
        let (mut cold, mut warm) = (Vec::new(), Vec::new());
        for run in 0..runs {
            let d = dir.join(format!("podman-{run}"));
            let Some(podman) = common::Podman::new(&d) else {
                break;
            };
            for (name, times) in [("pcold", &mut cold), ("pwarm", &mut warm)] {
                let o = d.join("out").join(name);
                std::fs::create_dir_all(&o).unwrap();
                let file = d.join(format!("{name}.yaml"));
                std::fs::write(&file, pod_manifest(name, image, &o)).unwrap();
                let t = Instant::now();
                let mut play = podman.cmd(&["kube", "play", "--tls-verify=false"]);
                let out = play.arg(&file).stderr(Stdio::piped()).output().unwrap();
                assert!(
                    out.status.success(),
                    "podman kube play {name} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                assert!(agent::runtime::wait_for_file(
                    &o,
                    "started",
                    Duration::from_secs(120)
                ));
                times.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            drop(podman);
            let _ = std::fs::remove_dir_all(&d);
        }
        report(
            "podman kube play → first instruction, image pulled",
            &mut cold,
            &mut [],
        );
        report(
            "podman kube play → first instruction, image present",
            &mut warm,
            &mut [],
        );
    }
    std::process::ExitCode::SUCCESS
}

/// A pod whose container touches `out/started` as its first instruction.
fn pod_manifest(name: &str, image: &str, out: &Path) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  terminationGracePeriodSeconds: 1\n  volumes: [{{name: out, hostPath: {{path: {}}}}}]\n  containers:\n  - {{name: c, image: '{image}', imagePullPolicy: IfNotPresent, command: [sh, -c, 'touch /out/started; sleep 100000'], volumeMounts: [{{name: out, mountPath: /out}}]}}\n",
        out.display()
    )
}
