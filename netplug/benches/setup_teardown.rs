//! Pod network setup and teardown, podagent's netplug beside the CNI plugins
//! `bridge` and `host-local` doing the same work (a netns, a veth on a bridge,
//! an address, a default route), on the same machine in the same run.
//!
//! As root: `cargo bench -p netplug --bench setup_teardown [-- PODS]`. Runs in a
//! network namespace of its own: the host's network is not touched.
//! Prints median, p90 and p99 per pod for both, in milliseconds.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use netplug::{netns, Config, Network};

const CNI_DIR: &str = "/usr/lib/cni";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

fn report(name: &str, mut d: Vec<Duration>) {
    d.sort();
    let mean = d.iter().sum::<Duration>().as_secs_f64() * 1000.0 / d.len() as f64;
    println!(
        "{name:<28} n={:<4} median {:>7.2} ms  p90 {:>7.2} ms  p99 {:>7.2} ms  mean {:>7.2} ms",
        d.len(),
        percentile(&d, 0.5),
        percentile(&d, 0.9),
        percentile(&d, 0.99),
        mean
    );
}

fn cni(command: &str, id: &str, ns: &Path, conf: &str) -> Result<(), String> {
    let mut child = Command::new(Path::new(CNI_DIR).join("bridge"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", id)
        .env("CNI_NETNS", ns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", CNI_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(conf.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn main() -> std::process::ExitCode {
    let pods: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(200);
    if !nix::unistd::geteuid().is_root() {
        eprintln!("the benchmark needs root (it makes network namespaces)");
        return std::process::ExitCode::from(2);
    }
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare(CLONE_NEWNET)");
    let dir = tempfile::tempdir().unwrap();
    println!(
        "pod network setup/teardown, {pods} pods, {} CPUs, kernel {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
    );

    let net = Network::new(Config::new(dir.path().join("podagent"))).unwrap();
    net.init().unwrap();
    let ids: Vec<String> = (0..pods).map(|i| format!("bench-{i}")).collect();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let mut steps: Vec<(String, Duration)> = Vec::new();
    for id in &ids {
        let t = Instant::now();
        let mut last = t;
        net.setup_observed(id, &[], &mut |s| {
            steps.push((format!("{s:?}"), last.elapsed()));
            last = Instant::now();
        })
        .unwrap();
        up.push(t.elapsed());
    }
    if std::env::var_os("STEPS").is_some() {
        for name in [
            "Allocated",
            "NetnsCreated",
            "VethCreated",
            "Configured",
            "PortsPublished",
        ] {
            report(
                &format!("  step {name}"),
                steps
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, d)| *d)
                    .collect(),
            );
        }
    }
    for id in &ids {
        let t = Instant::now();
        net.teardown(id).unwrap();
        down.push(t.elapsed());
    }
    net.destroy_node_side().unwrap();
    report("podagent netplug setup", up);
    report("podagent netplug teardown", down);

    if !Path::new(CNI_DIR).join("bridge").exists() {
        println!("CNI plugins not found in {CNI_DIR} (apt-get install containernetworking-plugins): no comparison");
        return std::process::ExitCode::SUCCESS;
    }
    let conf = format!(
        r#"{{"cniVersion":"1.0.0","name":"bench","type":"bridge","bridge":"cnibr0","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","subnet":"10.89.0.0/16","dataDir":"{}"}}}}"#,
        dir.path().join("cni-ipam").display()
    );
    let ns_dir = dir.path().join("cni-netns");
    std::fs::create_dir_all(&ns_dir).unwrap();
    let (mut up, mut down) = (Vec::new(), Vec::new());
    for id in &ids {
        let ns = ns_dir.join(id);
        let t = Instant::now();
        netns::create(&ns).unwrap();
        cni("ADD", id, &ns, &conf).unwrap_or_else(|e| panic!("CNI ADD {id}: {e}"));
        up.push(t.elapsed());
    }
    for id in &ids {
        let ns = ns_dir.join(id);
        let t = Instant::now();
        cni("DEL", id, &ns, &conf).unwrap_or_else(|e| panic!("CNI DEL {id}: {e}"));
        netns::remove(&ns).unwrap();
        down.push(t.elapsed());
    }
    report("CNI bridge+host-local setup", up);
    report("CNI bridge+host-local teardown", down);
    std::process::ExitCode::SUCCESS
}
