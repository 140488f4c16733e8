//! `podagent run`: the agent's loop, a first version. It watches the pods
//! directory (inotify: close-write, moved-to/from, delete, overflow), plans
//! with `reconcile::plan`, executes the actions through netplug and the
//! runtime, notices container exits (inotify on each container's state
//! directory), wakes for back-offs, resyncs everything every `resync`, and
//! writes `status.json` (what `podctl status` shows) after each pass.
//!
//! Deliberately synchronous for now: one thread, blocking in `poll` on
//! inotify descriptors and a signalfd, so an idle agent uses no CPU. On start
//! it re-adopts the pods a previous agent left running (same sandbox, address
//! and container processes, checked by start time) and removes the rest. The
//! API socket, probes, events and metrics are not done (issue 5).

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use serde::Serialize;
use specs::plan::PodPlan;
use specs::NodeInfo;

use crate::events::Kind;
use crate::reconcile::{self, Action, ContainerState, PodState, Status};
use crate::runtime::{sandbox, Runtime, Sandbox};
use crate::shim::Exited;
use crate::watch::Sources;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[arg(long, default_value = "/etc/pods")]
    pub pods_dir: PathBuf,
    /// Read manifests in subdirectories of the pods dir too (to a depth of
    /// 8; hidden directories and symlinks are not followed).
    #[arg(long)]
    pub pods_dir_recursive: bool,
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
    /// How events are logged on stderr: `text` lines or one JSON object a
    /// line.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// A YAML file of these options by their long names (`pods-dir: /srv/pods`,
    /// `stop-pods-on-exit: true`); options on the command line win.
    #[arg(long)]
    pub config: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// The command-line arguments a config file stands for, to be placed before
/// the real ones (later ones win). Unknown keys, and values of the wrong
/// type, are errors.
pub fn config_args(path: &Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let map: BTreeMap<String, serde_yaml::Value> =
        serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let cmd = <Args as clap::Args>::augment_args(clap::Command::new("run"));
    let mut out = Vec::new();
    for (key, value) in map {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
            .ok_or_else(|| format!("{}: {key}: not an option of podagent run", path.display()))?;
        let takes_value = arg.get_action().takes_values();
        match (value, takes_value) {
            (serde_yaml::Value::Bool(true), false) => out.push(format!("--{key}")),
            (serde_yaml::Value::Bool(false), false) => {}
            (serde_yaml::Value::String(v), true) => out.extend([format!("--{key}"), v]),
            (serde_yaml::Value::Number(n), true) => out.extend([format!("--{key}"), n.to_string()]),
            (v, _) => {
                return Err(format!(
                    "{}: {key}: {} expected, not {v:?}",
                    path.display(),
                    if takes_value {
                        "a value"
                    } else {
                        "true or false"
                    }
                ))
            }
        }
    }
    Ok(out)
}

impl Args {
    pub fn api_socket(&self) -> PathBuf {
        self.api_socket
            .clone()
            .unwrap_or_else(|| self.state_dir.join("podagent.sock"))
    }
}

/// One pod as `podctl status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct PodStatus {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub file: String,
    pub phase: String,
    /// What kubectl would show instead of the phase (`Init:0/1`).
    pub reason: Option<String>,
    pub conditions: Vec<Condition>,
    pub ip: Option<String>,
    pub containers: Vec<ContainerStatus>,
    pub created: String,
}

/// A pod condition (PodScheduled, Initialized, ContainersReady, Ready).
#[derive(Debug, Clone, Serialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ContainerStatus {
    pub name: String,
    pub state: String,
    pub restart_count: u32,
    pub exit_code: Option<i32>,
    pub ready: bool,
    /// Why it last terminated (Completed, Error, OOMKilled, StartError).
    pub reason: Option<String>,
    pub message: Option<String>,
    /// When a container in back-off is tried again.
    pub next_start: Option<String>,
    pub image: String,
    /// When the current run started (RFC 3339).
    pub started_at: Option<String>,
    /// The last exit's times (RFC 3339).
    pub last_started_at: Option<String>,
    pub last_finished_at: Option<String>,
    pub last_exit_code: Option<i32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Status_ {
    pub pods: Vec<PodStatus>,
    /// `file:line:col: path: message` of every manifest problem.
    pub problems: Vec<String>,
    pub conflicts: Vec<String>,
}

#[derive(Debug)]
struct PodRun {
    sandbox: Sandbox,
    net_ns: Option<PathBuf>,
    ip: Option<String>,
    created: SystemTime,
}

#[derive(Debug)]
pub struct Agent {
    args: Args,
    node: NodeInfo,
    rt: std::sync::Arc<Runtime>,
    net: Option<netplug::Network>,
    /// Container starts in flight, on the pool's threads, by (pod,
    /// container), with their pod's uid.
    starter: crate::starter::Starter,
    starting: BTreeMap<(String, String), String>,
    sources: Sources,
    actual: reconcile::Actual,
    runs: BTreeMap<String, PodRun>,
    exits: Inotify,
    watched: BTreeMap<WatchDescriptor, (String, String)>,
    /// A pidfd on each running container's shim, by (pod, container): a
    /// shim that dies without writing `exit.json` is noticed at once.
    shims: BTreeMap<(String, String), Shim>,
    /// Each container's last exit record (reason, message), by (pod,
    /// container).
    last_exit: BTreeMap<(String, String), Exited>,
    /// The OOM-kill count of each container's cgroup when it started.
    oom_base: BTreeMap<(String, String), u64>,
    /// When each running container started (RFC 3339).
    started_at: BTreeMap<(String, String), String>,
    /// What the API serves.
    view: crate::api::Shared,
    /// Manifest problems last reported as events.
    reported: Vec<String>,
    /// Each running container's probes, by (pod, container).
    probes: BTreeMap<(String, String), crate::probe::ContainerProbes>,
    /// Probe attempts run on threads; they send their result here and
    /// write a byte to `probe_wake` so the loop wakes.
    probe_tx: std::sync::mpsc::Sender<ProbeResult>,
    probe_rx: std::sync::mpsc::Receiver<ProbeResult>,
    probe_wake: (
        std::os::unix::net::UnixStream,
        std::os::unix::net::UnixStream,
    ),
    /// When a container being stopped is SIGKILLed (its grace period over),
    /// with its pod's uid, by (pod, container).
    kills: BTreeMap<(String, String), (String, Instant)>,
    /// Containers being stopped to start again with a new spec or new
    /// resources: started at once when their exit is recorded.
    stopping: std::collections::BTreeSet<(String, String)>,
    restart_after_exit: Vec<(String, String)>,
    /// Pods being stopped: their containers got SIGTERM; once all have
    /// exited (or been killed at the deadline) the pod is removed. The loop
    /// goes on meanwhile, so a slow pod holds up no other.
    terminating: BTreeMap<String, Terminating>,
    /// The shims this agent spawned (its children), to reap.
    children: Vec<i32>,
}

#[derive(Debug)]
struct Terminating {
    uid: String,
    containers: Vec<String>,
    deadline: Instant,
    killed: bool,
}

#[derive(Debug)]
struct ProbeResult {
    id: (String, String),
    pid: i32,
    kind: crate::probe::Kind,
    result: Result<(), String>,
}

#[derive(Debug)]
struct Shim {
    pidfd: std::os::fd::OwnedFd,
    pid: i32,
}

/// The pod's host ports, for netplug.
fn host_ports(p: &PodPlan) -> Vec<netplug::HostPort> {
    p.all_containers()
        .flat_map(|c| c.ports.iter())
        .filter_map(|port| {
            Some(netplug::HostPort {
                protocol: match port.protocol {
                    specs::plan::Protocol::Tcp => netplug::Protocol::Tcp,
                    specs::plan::Protocol::Udp => netplug::Protocol::Udp,
                    specs::plan::Protocol::Sctp => netplug::Protocol::Sctp,
                },
                host_port: port.host_port?,
                container_port: port.container_port,
            })
        })
        .collect()
}

fn now_rfc3339() -> String {
    crate::shim::logs::rfc3339_nano(SystemTime::now())
}

impl Agent {
    pub fn new(args: Args, podagent: PathBuf) -> Result<Self, String> {
        // Before anything is touched: a newer agent's records are not ours
        // to misread.
        crate::records::check(&args.state_dir)?;
        let recursive = args.pods_dir_recursive;
        let node = crate::cli::validate::node_info_defaults();
        let images = crate::image::ImageStore::open(&args.root_dir.join("store"))
            .map_err(|e| e.to_string())?;
        let cgroups = crate::cgroups::detect(Path::new("/proc/self/mountinfo"))
            .map_err(|e| e.to_string())?
            .driver();
        std::fs::create_dir_all(&args.state_dir)
            .map_err(|e| format!("{}: {e}", args.state_dir.display()))?;
        let rt = Runtime {
            state_dir: args.state_dir.clone(),
            images,
            cgroups,
            cgroup_root: args.cgroup_root.clone(),
            podagent,
        };
        let net = if args.no_network {
            None
        } else {
            let mut cfg = netplug::Config::new(args.state_dir.join("net"));
            cfg.bridge = args.bridge.clone();
            cfg.cidr = args
                .pod_cidr
                .parse()
                .map_err(|e| format!("--pod-cidr {}: {e}", args.pod_cidr))?;
            let n = netplug::Network::new(cfg).map_err(|e| e.to_string())?;
            n.init().map_err(|e| format!("network: {e}"))?;
            Some(n)
        };
        let exits = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
            .map_err(|e| e.to_string())?;
        let json_log = args.log_format == LogFormat::Json;
        let (probe_tx, probe_rx) = std::sync::mpsc::channel();
        let probe_wake =
            std::os::unix::net::UnixStream::pair().map_err(|e| format!("socketpair: {e}"))?;
        probe_wake
            .0
            .set_nonblocking(true)
            .map_err(|e| e.to_string())?;
        let rt = std::sync::Arc::new(rt);
        let starter = crate::starter::Starter::new(
            rt.clone(),
            usize::from(args.parallel_starts),
            &probe_wake.1,
        )
        .map_err(|e| format!("start threads: {e}"))?;
        Ok(Agent {
            args,
            node,
            rt,
            net,
            starter,
            starting: BTreeMap::new(),
            sources: Sources::new(recursive),
            actual: BTreeMap::new(),
            runs: BTreeMap::new(),
            exits,
            watched: BTreeMap::new(),
            shims: BTreeMap::new(),
            last_exit: BTreeMap::new(),
            oom_base: BTreeMap::new(),
            started_at: BTreeMap::new(),
            view: std::sync::Arc::new(std::sync::Mutex::new(crate::api::View {
                events: crate::events::Events::new(json_log),
                ..Default::default()
            })),
            reported: Vec::new(),
            probes: BTreeMap::new(),
            probe_tx,
            probe_rx,
            probe_wake,
            kills: BTreeMap::new(),
            stopping: Default::default(),
            restart_after_exit: Vec::new(),
            terminating: BTreeMap::new(),
            children: Vec::new(),
        })
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.args.pods_dir)
            .map_err(|e| format!("{}: {e}", self.args.pods_dir.display()))?;
        let mut dir_watch =
            crate::watch::DirWatch::new(&self.args.pods_dir, self.args.pods_dir_recursive)?;
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        mask.thread_block().map_err(|e| e.to_string())?;
        let signals = SignalFd::new(&mask).map_err(|e| e.to_string())?;
        let group = match &self.args.api_group {
            None => None,
            Some(g) => Some(match g.parse::<u32>() {
                Ok(gid) => gid,
                Err(_) => nix::unistd::Group::from_name(g)
                    .ok()
                    .flatten()
                    .ok_or_else(|| format!("--api-group {g}: no such group"))?
                    .gid
                    .as_raw(),
            }),
        };
        let socket = self.args.api_socket();
        crate::api::serve(
            &socket,
            group,
            crate::api::Server {
                view: self.view.clone(),
                state_dir: self.args.state_dir.clone(),
                cgroups: crate::cgroups::detect(Path::new("/proc/self/mountinfo"))
                    .map_err(|e| e.to_string())?
                    .driver(),
                cgroup_root: self.args.cgroup_root.clone(),
            },
        )
        .map_err(|e| format!("the API: {e}"))?;
        self.sources.resync(&self.args.pods_dir, &self.node);
        self.adopt()?;
        let mut last_resync = Instant::now();
        loop {
            // A pass's actions change the actual state: plan again until
            // nothing is left to do (bounded: a failing action cannot spin).
            let mut wake = None;
            for _ in 0..16 {
                let (acted, w) = self.pass();
                wake = w;
                if !acted {
                    break;
                }
            }
            self.run_probes();
            self.enforce_kills();
            if self.progress_terminations() {
                continue; // a pod is gone: plan again (it may be recreated)
            }
            let resync_at = last_resync + Duration::from_secs(self.args.resync_secs);
            let timers = self
                .probes
                .values()
                .filter_map(|p| p.next_at())
                .chain(self.kills.values().map(|(_, at)| *at))
                .chain(self.terminating.values().map(|t| {
                    if t.killed {
                        t.deadline + Duration::from_secs(10)
                    } else {
                        t.deadline
                    }
                }))
                .chain(wake)
                .min();
            let until = timers.map_or(resync_at, |w| w.min(resync_at));
            let ms = until
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(60_000) as u16;
            let mut fds = vec![
                PollFd::new(dir_watch.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.exits.as_fd(), PollFlags::POLLIN),
                PollFd::new(signals.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.probe_wake.0.as_fd(), PollFlags::POLLIN),
            ];
            let shim_keys: Vec<(String, String)> = self.shims.keys().cloned().collect();
            fds.extend(
                self.shims
                    .values()
                    .map(|s| PollFd::new(s.pidfd.as_fd(), PollFlags::POLLIN)),
            );
            let _ = poll(&mut fds, PollTimeout::from(ms.max(1)));
            let ready: Vec<bool> = fds
                .iter()
                .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
                .collect();
            drop(fds);
            self.reap_children();
            if ready[3] {
                self.probe_results();
                self.start_results();
            }
            for (i, key) in shim_keys.into_iter().enumerate() {
                if ready[4 + i] {
                    self.shim_gone(&key);
                }
            }
            if ready[2] {
                break;
            }
            if ready[0] {
                match dir_watch.changes() {
                    crate::watch::Changes::Resync => {
                        self.sources.resync(&self.args.pods_dir, &self.node);
                    }
                    crate::watch::Changes::Files(paths) => {
                        for p in paths {
                            self.sources.refresh(&p, &self.node);
                        }
                    }
                }
            }
            if ready[1] {
                self.collect_exits();
            }
            if Instant::now() >= resync_at {
                self.sources.resync(&self.args.pods_dir, &self.node);
                last_resync = Instant::now();
            }
        }
        // The starts in flight are finished and recorded first, so a
        // container is neither left unrecorded (the next agent would take it
        // for an orphan) nor missed by the stop below.
        while !self.starting.is_empty() {
            match self.starter.wait(Duration::from_secs(60)) {
                Some(done) => self.finish_start(done),
                None => break,
            }
        }
        if self.args.stop_pods_on_exit {
            // Every pod gets its SIGTERM at once, so the grace periods run
            // together rather than one after another.
            let t0 = Instant::now();
            let desired = self.sources.desired();
            let keys: Vec<(String, Duration)> = self
                .actual
                .iter()
                .map(|(k, s)| (k.clone(), s.grace))
                .collect();
            for (k, _) in &keys {
                if let Some((_, p)) = desired.pods.get(k) {
                    self.rt.terminate(p);
                }
            }
            for (k, grace) in keys {
                let left = (t0 + grace).saturating_duration_since(Instant::now());
                self.delete_pod(&k, left);
            }
            // Pods already terminating: what is left is killed now.
            for t in std::mem::take(&mut self.terminating).into_values() {
                for n in &t.containers {
                    let _ = self.rt.kill_container(&t.uid, n);
                }
                let uid = t.uid.clone();
                let _ = self.rt.gc(&|u| u != uid);
                if let Some(net) = &self.net {
                    let _ = net.teardown(&t.uid);
                }
            }
        }
        let _ = std::fs::remove_file(&socket);
        Ok(())
    }

    /// Plans and executes once; returns whether anything was done, and when
    /// to wake for a back-off.
    fn pass(&mut self) -> (bool, Option<Instant>) {
        let desired = self.sources.desired();
        // A pod still terminating is left alone until it is gone.
        let plans: reconcile::Desired = desired
            .pods
            .iter()
            .filter(|(k, _)| !self.terminating.contains_key(*k))
            .map(|(k, (_, p))| (k.clone(), p.clone()))
            .collect();
        for (key, name) in std::mem::take(&mut self.restart_after_exit) {
            if let Some(p) = plans.get(&key) {
                self.start(&key, p, &name, true);
            }
        }
        let t0 = Instant::now();
        let mut plan = reconcile::plan(&plans, &self.actual, t0);
        // A container already being stopped for a restart needs nothing
        // more; one being started is left alone until its start is done.
        plan.actions.retain(|a| match a {
            Action::RestartContainer { pod, container } => {
                let id = (pod.clone(), container.clone());
                !self.stopping.contains(&id) && !self.starting.contains_key(&id)
            }
            Action::StartContainer { pod, container }
            | Action::ResizeContainer { pod, container, .. } => !self
                .starting
                .contains_key(&(pod.clone(), container.clone())),
            _ => true,
        });
        let acted = !plan.actions.is_empty();
        for action in plan.actions {
            self.execute(&action, &plans);
        }
        self.write_status(&desired);
        if let Ok(mut v) = self.view.lock() {
            v.reconcile.observe(t0.elapsed().as_secs_f64());
            v.ready = true;
        }
        (acted, plan.wake_at)
    }

    fn execute(&mut self, action: &Action, plans: &reconcile::Desired) {
        match action {
            Action::CreateSandbox { pod } => match self.create_sandbox(pod, &plans[pod]) {
                Ok(()) => {
                    let ip = self.runs.get(pod).and_then(|r| r.ip.clone());
                    let message = match ip {
                        Some(ip) => format!("sandbox ready, IP {ip}"),
                        None => "sandbox ready".to_string(),
                    };
                    self.event(Kind::Normal, "Scheduled", pod, None, message);
                }
                Err(e) => self.event(
                    Kind::Warning,
                    "FailedCreatePodSandBox",
                    pod,
                    None,
                    e.to_string(),
                ),
            },
            Action::StartContainer { pod, container } => {
                self.start(pod, &plans[pod], container, false)
            }
            Action::RestartContainer { pod, container } => {
                self.restart(pod, &plans[pod], container, "its definition changed");
            }
            Action::ResizeContainer {
                pod,
                container,
                resources,
            } => {
                let p = &plans[pod];
                if let Ok(cg) = self
                    .rt
                    .pod_cgroup(p)
                    .and_then(|cg| cg.join(container).map_err(Into::into))
                {
                    let limits = crate::runtime::container_limits(resources);
                    match self.rt.cgroups.apply(&cg, &limits) {
                        Ok(()) => {
                            self.event(
                                Kind::Normal,
                                "Resized",
                                pod,
                                Some(container),
                                "resources applied to its cgroup in place".into(),
                            );
                            if let Some(s) = self
                                .actual
                                .get_mut(pod)
                                .and_then(|s| s.containers.get_mut(container))
                            {
                                s.resources = resources.clone();
                            }
                        }
                        // The kernel refused (a limit below current usage):
                        // restart it with the new limits instead.
                        Err(e) => {
                            self.event(
                                Kind::Warning,
                                "ResizeFailed",
                                pod,
                                Some(container),
                                format!("{e}; restarting it with the new resources"),
                            );
                            self.restart(pod, p, container, "the kernel refused the new limits");
                        }
                    }
                }
            }
            Action::RecreatePod { pod } | Action::DeletePod { pod, .. } => {
                let (reason, message) = match action {
                    Action::RecreatePod { .. } => (
                        "SandboxChanged",
                        "pod-level fields changed: it will be killed and re-created",
                    ),
                    _ => ("Killing", "its manifest is gone: stopping the pod"),
                };
                self.event(Kind::Normal, reason, pod, None, message.into());
                let grace = match action {
                    Action::DeletePod { grace, .. } => *grace,
                    _ => self
                        .actual
                        .get(pod)
                        .map_or(Duration::from_secs(30), |s| s.grace),
                };
                self.begin_delete(pod, grace);
            }
        }
    }

    fn create_sandbox(&mut self, key: &str, p: &PodPlan) -> Result<(), String> {
        let mut sb = sandbox::create(&self.args.state_dir, p).map_err(|e| e.to_string())?;
        self.rt
            .ensure_pid_namespace(p, &mut sb)
            .map_err(|e| e.to_string())?;
        let (mut net_ns, mut ip) = (None, None);
        if let (Some(net), false) = (&self.net, p.host_network) {
            let ports = host_ports(p);
            let a = net.setup(&p.uid, &ports).map_err(|e| e.to_string())?;
            let node_resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
            let dns = netplug::dns::DnsSettings {
                replace: p.dns.policy == specs::plan::DnsPolicy::None,
                nameservers: p.dns.nameservers.clone(),
                searches: p.dns.searches.clone(),
                options: p.dns.options.clone(),
            };
            let files = net
                .write_dns_files(
                    &p.uid,
                    &p.hostname,
                    Some(a.ip),
                    &p.host_aliases,
                    &node_resolv,
                    &dns,
                )
                .map_err(|e| e.to_string())?;
            sb.files = vec![
                ("/etc/hosts".into(), files.hosts),
                ("/etc/resolv.conf".into(), files.resolv_conf),
            ];
            sb.pod_ip = Some(a.ip.to_string());
            ip = Some(a.ip.to_string());
            net_ns = Some(a.netns);
        }
        self.rt.create_pod_cgroup(p).map_err(|e| e.to_string())?;
        self.runs.insert(
            key.to_string(),
            PodRun {
                sandbox: sb,
                net_ns,
                ip,
                created: SystemTime::now(),
            },
        );
        let record = serde_json::json!({
            "sandbox_hash": reconcile::sandbox_hash(p),
            "grace_secs": p.termination_grace_period_secs,
        });
        crate::records::write(
            &self
                .args
                .state_dir
                .join("pods")
                .join(&p.uid)
                .join("agent.json"),
            record,
        );
        self.actual.insert(
            key.to_string(),
            PodState {
                uid: p.uid.clone(),
                sandbox_hash: reconcile::sandbox_hash(p),
                grace: Duration::from_secs(p.termination_grace_period_secs),
                containers: BTreeMap::new(),
            },
        );
        Ok(())
    }

    /// Re-adopts what a previous agent left running for the pods still
    /// desired (DESIGN rule 4): the same sandbox, the same address, the same
    /// container processes (checked by their start time); the rest is removed.
    fn adopt(&mut self) -> Result<(), String> {
        let desired = self.sources.desired();
        let mut adopted: Vec<String> = Vec::new();
        let mut shims = Vec::new();
        for (key, (_, p)) in &desired.pods {
            let pod_dir = self.args.state_dir.join("pods").join(&p.uid);
            let Some(rec) = crate::records::read(&pod_dir.join("agent.json")) else {
                continue;
            };
            if rec["sandbox_hash"].as_str() != Some(reconcile::sandbox_hash(p).as_str()) {
                continue; // changed while the agent was away: recreated
            }
            let mut containers = BTreeMap::new();
            let base = self.args.state_dir.join("containers").join(&p.uid);
            for c in p.all_containers() {
                let dir = base.join(c.name.as_str());
                let Some(crec) = crate::records::read(&dir.join("agent.json")) else {
                    continue;
                };
                let state = dir.join("state");
                let status = if let Some(exit) = crate::records::read(&state.join("exit.json")) {
                    let now = Instant::now();
                    Status::Terminated {
                        exit_code: exit["exit_code"].as_i64().unwrap_or(255) as i32,
                        started: now,
                        finished: now,
                    }
                } else if let Some(started) = crate::records::read(&state.join("state.json")) {
                    let pid = started["pid"].as_i64().unwrap_or(0) as i32;
                    if crate::shim::start_ticks(pid) != started["start_ticks"].as_u64() {
                        continue; // gone without an exit record (its shim died)
                    }
                    if let Ok(wd) = self.exits.add_watch(&state, AddWatchFlags::IN_MOVED_TO) {
                        self.watched.insert(wd, (key.clone(), c.name.to_string()));
                    }
                    if let Ok(st) = serde_json::from_value::<crate::shim::Started>(started) {
                        let mut probes = crate::probe::ContainerProbes::new(c, Instant::now());
                        probes.pid = st.pid;
                        self.started_at
                            .insert((key.clone(), c.name.to_string()), st.started_at.clone());
                        self.probes
                            .insert((key.clone(), c.name.to_string()), probes);
                        shims.push((key.clone(), c.name.to_string(), st));
                    }
                    Status::Running {
                        since: Instant::now(),
                    }
                } else {
                    continue;
                };
                // Resources as they were applied; a difference is resized.
                let same =
                    crec["resources"] == serde_json::to_value(&c.resources).unwrap_or_default();
                let mut resources = c.resources.clone();
                if !same {
                    resources.cpu_shares = 0;
                }
                containers.insert(
                    c.name.to_string(),
                    ContainerState {
                        hash: crec["hash"].as_str().unwrap_or("").to_string(),
                        resources,
                        status,
                        restart_count: crec["restart_count"].as_u64().unwrap_or(0) as u32,
                        crashes: crec["crashes"].as_u64().unwrap_or(0) as u32,
                    },
                );
            }
            let mut sb = sandbox::create(&self.args.state_dir, p).map_err(|e| e.to_string())?;
            self.rt
                .ensure_pid_namespace(p, &mut sb)
                .map_err(|e| e.to_string())?;
            let (mut net_ns, mut ip) = (None, None);
            if let (Some(net), false) = (&self.net, p.host_network) {
                // Idempotent: the pod keeps its address and interfaces.
                let a = net
                    .setup(&p.uid, &host_ports(p))
                    .map_err(|e| e.to_string())?;
                let hosts = net.config().state_dir.join("pods").join(&p.uid);
                sb.files = vec![
                    ("/etc/hosts".into(), hosts.join("hosts")),
                    ("/etc/resolv.conf".into(), hosts.join("resolv.conf")),
                ];
                sb.pod_ip = Some(a.ip.to_string());
                ip = Some(a.ip.to_string());
                net_ns = Some(a.netns);
            }
            self.runs.insert(
                key.clone(),
                PodRun {
                    sandbox: sb,
                    net_ns,
                    ip,
                    created: SystemTime::now(),
                },
            );
            self.actual.insert(
                key.clone(),
                PodState {
                    uid: p.uid.clone(),
                    sandbox_hash: reconcile::sandbox_hash(p),
                    grace: Duration::from_secs(rec["grace_secs"].as_u64().unwrap_or(30)),
                    containers,
                },
            );
            adopted.push(p.uid.clone());
        }
        // Their shims are watched once the pods are in `actual`: one that
        // died while the agent was away is handled like one that dies now.
        for (key, name, st) in shims {
            self.watch_shim(&key, &name, &st);
        }
        // What no desired pod owns: a crash's leftovers, pods deleted while
        // the agent was away.
        self.rt
            .gc(&|uid| adopted.iter().any(|a| a == uid))
            .map_err(|e| format!("cleaning up: {e}"))?;
        if let Some(n) = &self.net {
            n.gc(&|id| adopted.iter().any(|a| a == id))
                .map_err(|e| format!("cleaning up the network: {e}"))?;
        }
        Ok(())
    }

    /// Hands a container's start to the pool; `finish_start` records it.
    /// Until then it shows as Waiting and the planner leaves it alone.
    fn start(&mut self, key: &str, p: &PodPlan, name: &str, new_spec: bool) {
        let id = (key.to_string(), name.to_string());
        if self.starting.contains_key(&id) {
            return;
        }
        let Some(c) = p.all_containers().find(|c| c.name.as_str() == name) else {
            return;
        };
        let Some(run) = self.runs.get(key) else {
            return;
        };
        let prev = self
            .actual
            .get(key)
            .and_then(|s| s.containers.get(name))
            .cloned();
        let (restarts, crashes) = match (&prev, new_spec) {
            (None, _) => (0, 0),
            (Some(s), true) => (s.restart_count + 1, 0),
            (Some(s), false) => (s.restart_count + 1, s.crashes),
        };
        // The previous run's exit (perhaps still queued) is not this run's.
        let stale: Vec<WatchDescriptor> = self
            .watched
            .iter()
            .filter(|(_, (k, n))| k == key && n == name)
            .map(|(wd, _)| *wd)
            .collect();
        for wd in stale {
            let _ = self.exits.rm_watch(wd);
            self.watched.remove(&wd);
        }
        let job = crate::starter::Job {
            id: id.clone(),
            pod: p.clone(),
            container: c.clone(),
            sandbox: run.sandbox.clone(),
            net_ns: run.net_ns.clone(),
            restarts,
            crashes,
        };
        self.set_container(key, c, Status::Waiting, restarts, crashes);
        self.starting.insert(id, p.uid.clone());
        self.starter.submit(job);
    }

    /// Records a container of pod `key` in the actual state.
    fn set_container(
        &mut self,
        key: &str,
        c: &specs::plan::ContainerPlan,
        status: Status,
        restart_count: u32,
        crashes: u32,
    ) {
        if let Some(s) = self.actual.get_mut(key) {
            s.containers.insert(
                c.name.to_string(),
                ContainerState {
                    hash: c.hash.clone(),
                    resources: c.resources.clone(),
                    status,
                    restart_count,
                    crashes,
                },
            );
        }
    }

    /// Records the starts the pool has finished.
    fn start_results(&mut self) {
        for done in self.starter.finished() {
            self.finish_start(done);
        }
    }

    fn finish_start(&mut self, done: crate::starter::Done) {
        let crate::starter::Done { job, result } = done;
        self.starting.remove(&job.id);
        let (key, name) = (job.id.0.as_str(), job.id.1.as_str());
        let (p, c) = (&job.pod, &job.container);
        let (restarts, crashes) = (job.restarts, job.crashes);
        let current = !self.terminating.contains_key(key)
            && self.actual.get(key).is_some_and(|s| s.uid == p.uid);
        if !current {
            // Its pod began stopping meanwhile: the new process follows the
            // others (SIGTERM now, SIGKILL at the pod's deadline).
            if let Ok(h) = &result {
                self.children.push(h.started.shim_pid);
                match self.terminating.get_mut(key).filter(|t| t.uid == p.uid) {
                    Some(t) if !t.killed => {
                        if !t.containers.iter().any(|n| n == name) {
                            t.containers.push(name.to_string());
                        }
                        crate::runtime::signal_init(&h.dir.join("state"), Signal::SIGTERM);
                    }
                    _ => {
                        let _ = self.rt.kill_container(&p.uid, name);
                    }
                }
            }
            return;
        }
        let now = Instant::now();
        let id = job.id.clone();
        let mut shim = None;
        let status = match result {
            Ok(h) => {
                self.event(
                    Kind::Normal,
                    "Started",
                    key,
                    Some(name),
                    format!("started {} (pid {})", c.image, h.started.pid),
                );
                for w in &h.started.warnings {
                    self.event(Kind::Warning, "Degraded", key, Some(name), w.clone());
                }
                if let Some(u) = self.rt.container_usage(&p.uid, name) {
                    self.oom_base.insert(id.clone(), u.oom_kills);
                }
                self.started_at
                    .insert(id.clone(), h.started.started_at.clone());
                self.children.push(h.started.shim_pid);
                let mut probes = crate::probe::ContainerProbes::new(c, now);
                probes.pid = h.started.pid;
                self.probes.insert(id.clone(), probes);
                if let Ok(wd) = self
                    .exits
                    .add_watch(&h.dir.join("state"), AddWatchFlags::IN_MOVED_TO)
                {
                    self.watched.insert(wd, (key.to_string(), name.to_string()));
                }
                let record = serde_json::json!({
                    "hash": c.hash,
                    "resources": c.resources,
                    "restart_count": restarts,
                    "crashes": crashes,
                });
                crate::records::write(&h.dir.join("agent.json"), record);
                shim = Some(h.started);
                Status::Running { since: now }
            }
            Err(e) => {
                self.event(Kind::Warning, "Failed", key, Some(name), e.to_string());
                self.last_exit.insert(
                    id,
                    Exited {
                        exit_code: 128,
                        signal: None,
                        started_at: None,
                        finished_at: now_rfc3339(),
                        reason: "StartError".into(),
                        message: e.to_string(),
                        warnings: Vec::new(),
                    },
                );
                Status::Terminated {
                    exit_code: 128,
                    started: now,
                    finished: now,
                }
            }
        };
        let crashes = if matches!(status, Status::Terminated { .. }) {
            crashes + 1
        } else {
            crashes
        };
        self.set_container(key, c, status, restarts, crashes);
        // Once it is recorded as running: a container that already exited
        // is found through its shim's pidfd.
        if let Some(started) = shim {
            self.watch_shim(key, name, &started);
        }
    }

    /// Reaps the shims this agent spawned that have exited (a shim adopted
    /// from a previous agent is not its child). Only they are waited for, so
    /// a probe's `exec` child is never taken from its thread.
    fn reap_children(&mut self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        self.children.retain(|pid| {
            matches!(
                waitpid(nix::unistd::Pid::from_raw(*pid), Some(WaitPidFlag::WNOHANG)),
                Ok(WaitStatus::StillAlive)
            )
        });
    }

    /// Starts the probe attempts that are due, each on a thread.
    fn run_probes(&mut self) {
        let now = Instant::now();
        let ids: Vec<(String, String)> = self.probes.keys().cloned().collect();
        for id in ids {
            let Some(cp) = self.probes.get_mut(&id) else {
                continue;
            };
            let pid = cp.pid;
            let due: Vec<(crate::probe::Kind, specs::plan::ProbePlan)> = cp
                .active()
                .filter(|p| p.due(now))
                .map(|p| {
                    p.begin();
                    (p.kind, p.plan.clone())
                })
                .collect();
            for (kind, plan) in due {
                let target = self.probe_target(&id);
                let tx = self.probe_tx.clone();
                let wake = self.probe_wake.1.try_clone();
                let for_thread = id.clone();
                let spawned = std::thread::Builder::new()
                    .name("probe".into())
                    .spawn(move || {
                        let timeout = Duration::from_secs(u64::from(plan.timeout_secs));
                        let result =
                            target.and_then(|t| crate::probe::attempt(&plan.action, t, timeout));
                        let _ = tx.send(ProbeResult {
                            id: for_thread,
                            pid,
                            kind,
                            result,
                        });
                        if let Ok(mut w) = wake {
                            use std::io::Write;
                            let _ = w.write_all(b"p");
                        }
                    });
                if spawned.is_err() {
                    // No thread now: the attempt is made next period.
                    if let Some(p) = self
                        .probes
                        .get_mut(&id)
                        .and_then(|cp| cp.probers.iter_mut().find(|p| p.kind == kind))
                    {
                        p.in_flight = false;
                        p.next_at = now + Duration::from_secs(1);
                    }
                }
            }
        }
    }

    /// Where a container's probe is made: its network namespace (opened
    /// through its pid, checked by start time), the pod's IP, and `podagent
    /// exec` for it.
    fn probe_target(&self, (key, name): &(String, String)) -> Result<crate::probe::Target, String> {
        let uid = &self.actual.get(key).ok_or("the pod is gone")?.uid;
        let dir = crate::runtime::container_dir(&self.args.state_dir, uid, name);
        let st: crate::shim::Started = crate::records::read(&dir.join("state/state.json"))
            .and_then(|v| serde_json::from_value(v).ok())
            .ok_or("the container is not running")?;
        let ns = std::fs::File::open(format!("/proc/{}/ns/net", st.pid))
            .map_err(|e| format!("the container's network namespace: {e}"))?;
        if crate::shim::start_ticks(st.pid) != Some(st.start_ticks) {
            return Err("the container is not running".into());
        }
        let pod_ip = self
            .runs
            .get(key)
            .and_then(|r| r.ip.as_deref())
            .and_then(|ip| ip.parse().ok());
        Ok(crate::probe::Target {
            net_ns: ns.into(),
            pod_ip,
            exec: crate::probe::exec_command(
                &self.rt.podagent,
                &dir,
                st.pid,
                st.start_ticks,
                &self.args.state_dir.join("seccomp-cache"),
            ),
        })
    }

    /// Applies the results the probe threads sent.
    fn probe_results(&mut self) {
        use crate::probe::{Change, Kind as P};
        let mut buf = [0u8; 256];
        while matches!(std::io::Read::read(&mut &self.probe_wake.0, &mut buf), Ok(n) if n > 0) {}
        let now = Instant::now();
        while let Ok(r) = self.probe_rx.try_recv() {
            let Some(cp) = self.probes.get_mut(&r.id) else {
                continue;
            };
            if cp.pid != r.pid {
                continue; // for an earlier run
            }
            let Some(p) = cp.probers.iter_mut().find(|p| p.kind == r.kind) else {
                continue;
            };
            let change = p.record(r.result.is_ok(), now);
            if r.kind == P::Startup && change == Change::Succeeded {
                cp.started = true;
            }
            let (key, name) = &r.id;
            if let Err(e) = &r.result {
                self.event(
                    Kind::Warning,
                    "Unhealthy",
                    key,
                    Some(name),
                    format!("{} probe failed: {e}", r.kind.name()),
                );
            }
            if change == Change::Failed && r.kind != P::Readiness {
                self.event(
                    Kind::Normal,
                    "Killing",
                    key,
                    Some(name),
                    format!(
                        "container {name} failed its {} probe, will be restarted",
                        r.kind.name().to_lowercase()
                    ),
                );
                self.stop_for_probe(&r.id);
            }
        }
    }

    /// Restarts a container with its current spec: a running one gets
    /// SIGTERM (SIGKILL to its cgroup after the grace period) and starts
    /// again once its exit is recorded, without the loop waiting; one not
    /// running starts now.
    fn restart(&mut self, key: &str, p: &PodPlan, name: &str, why: &str) {
        let id = (key.to_string(), name.to_string());
        if self.stopping.contains(&id) {
            return;
        }
        let running = self
            .actual
            .get(key)
            .and_then(|s| s.containers.get(name))
            .is_some_and(|c| matches!(c.status, Status::Running { .. }));
        if running {
            self.event(
                Kind::Normal,
                "Killing",
                key,
                Some(name),
                format!("{why}: it will be restarted"),
            );
            self.stop_for_probe(&id);
            self.stopping.insert(id);
        } else {
            self.start(key, p, name, true);
        }
    }

    /// Starts deleting a pod: SIGTERM to every container now; the loop goes
    /// on and `progress_terminations` removes the pod once they are gone.
    fn begin_delete(&mut self, key: &str, grace: Duration) {
        let Some(state) = self.actual.remove(key) else {
            return;
        };
        self.runs.remove(key);
        self.shims.retain(|(pod, _), _| pod != key);
        self.probes.retain(|(pod, _), _| pod != key);
        self.kills.retain(|(pod, _), _| pod != key);
        self.stopping.retain(|(pod, _)| pod != key);
        self.started_at.retain(|(pod, _), _| pod != key);
        self.last_exit.retain(|(pod, _), _| pod != key);
        self.oom_base.retain(|(pod, _), _| pod != key);
        let base = self.args.state_dir.join("containers").join(&state.uid);
        for name in state.containers.keys() {
            crate::runtime::signal_init(&base.join(name).join("state"), Signal::SIGTERM);
        }
        self.terminating.insert(
            key.to_string(),
            Terminating {
                uid: state.uid.clone(),
                containers: state.containers.keys().cloned().collect(),
                deadline: Instant::now() + grace,
                killed: false,
            },
        );
    }

    /// Kills what outlived its grace period and removes the pods whose
    /// containers have all exited. Returns whether a pod was removed.
    fn progress_terminations(&mut self) -> bool {
        let now = Instant::now();
        let mut done = Vec::new();
        for (key, t) in self.terminating.iter_mut() {
            // A start in flight still writes into the pod's directories.
            if self.starting.values().any(|uid| *uid == t.uid) {
                continue;
            }
            let base = self.args.state_dir.join("containers").join(&t.uid);
            let exited = t.containers.iter().all(|n| {
                let st = base.join(n).join("state");
                !st.join("state.json").exists() || st.join("exit.json").exists()
            });
            if exited || (t.killed && now >= t.deadline + Duration::from_secs(10)) {
                done.push(key.clone());
            } else if now >= t.deadline && !t.killed {
                for n in &t.containers {
                    let _ = self.rt.kill_container(&t.uid, n);
                }
                t.killed = true;
            }
        }
        for key in &done {
            let Some(t) = self.terminating.remove(key) else {
                continue;
            };
            // Everything of that uid: processes left, mounts, cgroups,
            // directories, sandbox; then its network.
            let uid = t.uid.clone();
            if let Err(e) = self.rt.gc(&|u| u != uid) {
                self.event(Kind::Warning, "FailedKillPod", key, None, e.to_string());
            }
            if let Some(net) = &self.net {
                let _ = net.teardown(&t.uid);
            }
            self.watched.retain(|_, (k, _)| k != key);
        }
        !done.is_empty()
    }

    /// SIGTERM to the container's init now, SIGKILL to its cgroup when the
    /// grace period is over; its exit then restarts it by policy. The loop
    /// does not wait.
    fn stop_for_probe(&mut self, id: &(String, String)) {
        self.probes.remove(id);
        let Some(state) = self.actual.get(&id.0) else {
            return;
        };
        let dir =
            crate::runtime::container_dir(&self.args.state_dir, &state.uid, &id.1).join("state");
        crate::runtime::signal_init(&dir, Signal::SIGTERM);
        self.kills.insert(
            id.clone(),
            (state.uid.clone(), Instant::now() + state.grace),
        );
    }

    /// SIGKILLs what is left of containers whose grace period is over.
    fn enforce_kills(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, String)> = self
            .kills
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(id, _)| id.clone())
            .collect();
        for id in due {
            if let Some((uid, _)) = self.kills.remove(&id) {
                let _ = self.rt.kill_container(&uid, &id.1);
            }
        }
    }

    /// Watches a container's shim through a pidfd. A shim already gone is
    /// handled at once.
    fn watch_shim(&mut self, key: &str, name: &str, started: &crate::shim::Started) {
        let id = (key.to_string(), name.to_string());
        if started.shim_pid <= 0 {
            return; // a record from before shims recorded themselves
        }
        match crate::sys::pidfd_open(started.shim_pid) {
            // The pidfd pins the process: checking its start time after
            // opening proves it is the shim and not a reused pid.
            Ok(pidfd)
                if crate::shim::start_ticks(started.shim_pid) == Some(started.shim_start_ticks) =>
            {
                self.shims.insert(
                    id,
                    Shim {
                        pidfd,
                        pid: started.shim_pid,
                    },
                );
            }
            _ => {
                self.shims.remove(&id);
                self.shim_died(&id, started.shim_pid);
            }
        }
    }

    /// A shim's pidfd became readable: it exited. Normally it wrote
    /// `exit.json` first and the exit is collected from there.
    fn shim_gone(&mut self, id: &(String, String)) {
        let Some(shim) = self.shims.remove(id) else {
            return;
        };
        self.shim_died(id, shim.pid);
    }

    /// If the container's shim is gone without an exit record, kills what
    /// is left of the container (its whole cgroup, so nothing escapes) and
    /// writes the record itself; the exit watch then restarts it by policy.
    fn shim_died(&mut self, (key, name): &(String, String), pid: i32) {
        let Some(state) = self.actual.get(key) else {
            return;
        };
        let uid = state.uid.clone();
        let dir = crate::runtime::container_dir(&self.args.state_dir, &uid, name).join("state");
        if !dir.is_dir() {
            return;
        }
        if dir.join("exit.json").exists() {
            // A normal exit; perhaps before the exit watch was added.
            self.record_exit(key, name);
            return;
        }
        let started = crate::records::read(&dir.join("state.json"));
        let _ = self.rt.kill_container(&uid, name);
        let message = format!("its shim (pid {pid}) died; its processes were killed");
        self.event(Kind::Warning, "ShimDied", key, Some(name), message.clone());
        let exited = Exited {
            exit_code: 137,
            signal: Some(9),
            started_at: started.and_then(|s| s["started_at"].as_str().map(str::to_string)),
            finished_at: now_rfc3339(),
            reason: "Error".into(),
            message,
            warnings: Vec::new(),
        };
        crate::records::write(
            &dir.join("exit.json"),
            serde_json::to_value(&exited).unwrap_or_default(),
        );
    }

    fn event(
        &self,
        kind: Kind,
        reason: &str,
        object: &str,
        container: Option<&str>,
        message: String,
    ) {
        if let Ok(mut v) = self.view.lock() {
            v.events
                .record(kind, reason, object, container, message, now_rfc3339());
        }
    }

    /// Records the exits the shims wrote.
    fn collect_exits(&mut self) {
        for ev in self.exits.read_events().unwrap_or_default() {
            if ev.name.as_deref().and_then(|n| n.to_str()) != Some("exit.json") {
                continue;
            }
            let Some((key, name)) = self.watched.get(&ev.wd).cloned() else {
                continue;
            };
            self.record_exit(&key, &name);
        }
    }

    /// Records a running container's exit from its `exit.json` (reached by
    /// the exit watch or by its shim's pidfd, whichever comes first; the
    /// second finds it no longer running).
    fn record_exit(&mut self, key: &str, name: &str) {
        let (key, name) = (key.to_string(), name.to_string());
        let stale: Vec<WatchDescriptor> = self
            .watched
            .iter()
            .filter(|(_, (k, n))| *k == key && *n == name)
            .map(|(wd, _)| *wd)
            .collect();
        {
            let Some(state) = self.actual.get_mut(&key) else {
                return;
            };
            let Some(c) = state.containers.get_mut(&name) else {
                return;
            };
            if !matches!(c.status, Status::Running { .. }) {
                return;
            }
            let dir = crate::runtime::container_dir(&self.args.state_dir, &state.uid, &name)
                .join("state/exit.json");
            let mut exited = std::fs::read(&dir)
                .ok()
                .and_then(|b| serde_json::from_slice::<Exited>(&b).ok())
                .unwrap_or_else(|| Exited {
                    exit_code: 255,
                    signal: None,
                    started_at: None,
                    finished_at: now_rfc3339(),
                    reason: "Error".into(),
                    message: "no readable exit record".into(),
                    warnings: Vec::new(),
                });
            let started = match c.status {
                Status::Running { since } => since,
                _ => Instant::now(),
            };
            c.status = Status::Terminated {
                exit_code: exited.exit_code,
                started,
                finished: Instant::now(),
            };
            c.crashes += 1;
            let uid = state.uid.clone();
            let id = (key.clone(), name.clone());
            self.probes.remove(&id);
            self.kills.remove(&id);
            if self.stopping.remove(&id) {
                // Stopped on purpose: it starts again at once.
                self.restart_after_exit.push(id);
                return;
            }
            // A SIGKILL while the cgroup's OOM-kill count went up: the
            // kernel's OOM killer (the count is the cgroup's, kept across
            // restarts, so it is compared with its value at start).
            let ooms = self
                .rt
                .container_usage(&uid, &name)
                .map_or(0, |u| u.oom_kills);
            if exited.signal == Some(9) && ooms > self.oom_base.get(&id).copied().unwrap_or(0) {
                exited.reason = "OOMKilled".into();
                self.event(
                    Kind::Warning,
                    "OOMKilled",
                    &key,
                    Some(&name),
                    "the kernel's OOM killer killed it (memory limit reached)".into(),
                );
            } else {
                let how = match exited.signal {
                    Some(sig) => format!("killed by signal {sig}"),
                    None => format!("exited with code {}", exited.exit_code),
                };
                let kind = if exited.exit_code == 0 {
                    Kind::Normal
                } else {
                    Kind::Warning
                };
                self.event(kind, "Exited", &key, Some(&name), how);
            }
            self.last_exit.insert(id, exited);
            // An init container restarts only on failure (never with Never).
            let policy = self.sources.pod(&key).map(|p| {
                let init = p.init_containers.iter().any(|c| c.name.as_str() == name);
                match (init, p.restart_policy) {
                    (true, specs::plan::RestartPolicy::Always) => {
                        specs::plan::RestartPolicy::OnFailure
                    }
                    (_, policy) => policy,
                }
            });
            let next = self
                .actual
                .get(&key)
                .and_then(|s| s.containers.get(&name))
                .zip(policy)
                .and_then(|(c, policy)| reconcile::restart_at(policy, c));
            if let Some(at) = next {
                let wait = at.saturating_duration_since(Instant::now());
                if !wait.is_zero() {
                    self.event(
                        Kind::Warning,
                        "BackOff",
                        &key,
                        Some(&name),
                        format!("back-off {}s restarting the container", wait.as_secs()),
                    );
                }
            }
        }
        for wd in stale {
            let _ = self.exits.rm_watch(wd);
            self.watched.remove(&wd);
        }
    }

    fn delete_pod(&mut self, key: &str, grace: Duration) {
        let Some(state) = self.actual.remove(key) else {
            return;
        };
        let run = self.runs.remove(key);
        self.shims.retain(|(pod, _), _| pod != key);
        self.probes.retain(|(pod, _), _| pod != key);
        self.kills.retain(|(pod, _), _| pod != key);
        // The runtime needs a plan for names and paths: the current one, or
        // one rebuilt from what runs (only uid and names are used).
        let plan = self.sources.pod(key).cloned();
        match plan {
            Some(p) if p.uid == state.uid => {
                self.rt.stop_all(&p, grace);
                for c in p.all_containers() {
                    let _ = self.rt.remove(&p, c);
                }
                let _ = self.rt.remove_pod(&p);
            }
            _ => {
                // Its file is gone: SIGTERM to each container's init, one
                // grace period for all, then GC's cgroup kill.
                let base = self.args.state_dir.join("containers").join(&state.uid);
                for name in state.containers.keys() {
                    crate::runtime::signal_init(&base.join(name).join("state"), Signal::SIGTERM);
                }
                let deadline = Instant::now() + grace;
                for name in state.containers.keys() {
                    crate::runtime::wait_for_file(
                        &base.join(name).join("state"),
                        "exit.json",
                        deadline.saturating_duration_since(Instant::now()),
                    );
                }
                let uid = state.uid.clone();
                let _ = self.rt.gc(&|u| u != uid);
            }
        }
        if let Some(net) = &self.net {
            let _ = net.teardown(&state.uid);
        }
        drop(run);
    }

    fn write_status(&mut self, desired: &crate::watch::DesiredState) {
        let mut pods = Vec::new();
        for (key, (file, p)) in &desired.pods {
            let state = self.actual.get(key);
            let run = self.runs.get(key);
            let containers: Vec<ContainerStatus> = p
                .containers
                .iter()
                .map(|c| {
                    let s = state.and_then(|s| s.containers.get(c.name.as_str()));
                    let last = self.last_exit.get(&(key.clone(), c.name.to_string()));
                    let mut next_start = None;
                    let (st, code) = match s.map(|s| &s.status) {
                        None | Some(Status::Waiting) => ("Waiting".to_string(), None),
                        Some(Status::Running { .. }) => ("Running".to_string(), None),
                        Some(Status::Terminated { exit_code, .. }) => {
                            let at = s.and_then(|s| reconcile::restart_at(p.restart_policy, s));
                            next_start = at.map(|at| {
                                let wait = at.saturating_duration_since(Instant::now());
                                crate::shim::logs::rfc3339_nano(SystemTime::now() + wait)
                            });
                            let crashing = s.is_some_and(|s| s.crashes > 1) && at.is_some();
                            (
                                if crashing {
                                    "CrashLoopBackOff".into()
                                } else if let Some(e) = last {
                                    e.reason.clone()
                                } else if *exit_code == 0 {
                                    "Completed".into()
                                } else {
                                    "Error".into()
                                },
                                Some(*exit_code),
                            )
                        }
                    };
                    let probed = self.probes.get(&(key.clone(), c.name.to_string()));
                    ContainerStatus {
                        name: c.name.to_string(),
                        ready: st == "Running" && probed.is_none_or(|p| p.ready()),
                        state: st,
                        restart_count: s.map_or(0, |s| s.restart_count),
                        exit_code: code,
                        reason: last.map(|e| e.reason.clone()),
                        message: last.map(|e| e.message.clone()).filter(|m| !m.is_empty()),
                        next_start,
                        image: c.image.clone(),
                        started_at: self
                            .started_at
                            .get(&(key.clone(), c.name.to_string()))
                            .cloned(),
                        last_started_at: last.and_then(|e| e.started_at.clone()),
                        last_finished_at: last.map(|e| e.finished_at.clone()),
                        last_exit_code: last.map(|e| e.exit_code),
                    }
                })
                .collect();
            let (phase, mut reason) = reconcile::phase(p, state);
            if self.terminating.contains_key(key) {
                reason = Some("Terminating".into());
            }
            let ready = phase == reconcile::Phase::Running && containers.iter().all(|c| c.ready);
            let initialized = reason.is_none() && state.is_some();
            let cond = |t: &str, ok: bool| Condition {
                kind: t.to_string(),
                status: if ok { "True" } else { "False" }.to_string(),
            };
            let conditions = vec![
                cond("PodScheduled", state.is_some()),
                cond("Initialized", initialized),
                cond("ContainersReady", ready),
                cond("Ready", ready),
            ];
            pods.push(PodStatus {
                namespace: p.namespace.clone(),
                name: p.name.to_string(),
                uid: p.uid.clone(),
                file: file.display().to_string(),
                phase: format!("{phase:?}"),
                reason,
                conditions,
                ip: run.and_then(|r| r.ip.clone()),
                containers,
                created: run
                    .map_or_else(now_rfc3339, |r| crate::shim::logs::rfc3339_nano(r.created)),
            });
        }
        // Pods whose file is gone are shown until they are.
        for (key, t) in &self.terminating {
            if desired.pods.contains_key(key) {
                continue;
            }
            let (namespace, name) = key.split_once('/').unwrap_or(("", key));
            pods.push(PodStatus {
                namespace: namespace.to_string(),
                name: name.to_string(),
                uid: t.uid.clone(),
                file: String::new(),
                phase: "Running".into(),
                reason: Some("Terminating".into()),
                conditions: Vec::new(),
                ip: None,
                containers: Vec::new(),
                created: String::new(),
            });
        }
        let problems: Vec<String> = self
            .sources
            .files
            .values()
            .flat_map(|f| f.diagnostics.iter().map(|d| d.to_string()))
            .collect();
        // A problem newly seen is an event (once, not on every pass).
        let new: Vec<String> = problems
            .iter()
            .filter(|p| !self.reported.contains(p))
            .cloned()
            .collect();
        for line in new {
            let object = line.split(':').next().unwrap_or("").to_string();
            self.event(Kind::Warning, "FailedValidation", &object, None, line);
        }
        for c in desired
            .conflicts
            .iter()
            .filter(|c| !self.reported.contains(c))
        {
            let object = c.split(':').next().unwrap_or("").to_string();
            self.event(Kind::Warning, "Conflict", &object, None, c.clone());
        }
        self.reported = problems.clone();
        self.reported.extend(desired.conflicts.iter().cloned());
        let status = Status_ {
            pods,
            problems,
            conflicts: desired.conflicts.clone(),
        };
        if let Ok(mut v) = self.view.lock() {
            v.status = Some(status);
        }
    }
}
