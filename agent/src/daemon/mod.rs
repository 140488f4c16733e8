//! `podagent run`: the agent. One thread, blocking in `poll`, so an idle
//! agent uses no CPU; container starts and probe attempts run on threads of
//! their own and report back through a wake socket.
//!
//! The flow, one stage a file:
//! - `args`: the options and the config file;
//! - `event_loop`: what the loop waits on, under named tokens, and until
//!   when (a pure function of the timers);
//! - `executor`: a pass: plan (`reconcile::plan`, pure) and turn each action
//!   into effects: sandboxes, starts handed to the pool, restarts, resizes,
//!   deletions begun;
//! - `sandbox`: the pod's sandbox, network and cgroup: one path for a pod
//!   made now and for one adopted from an earlier agent;
//! - `adopt`: at start, what an earlier agent left running is taken over
//!   from its records, and the rest removed;
//! - `supervise`: exits (the shim's `exit.json`), OOM kills, shims that die;
//! - `probes`: attempts on threads, their results applied;
//! - `hooks`: lifecycle hooks (postStart, preStop) on threads, their
//!   results applied;
//! - `images`: image garbage collection, on a thread, started at resyncs;
//! - `storage`: ephemeral storage measured on a thread, pods over their
//!   limits evicted;
//! - `terminate`: stops and kills with their deadlines, pods removed once
//!   their containers are gone;
//! - `publish`: the status projection (`crate::status`, pure) and the
//!   events of manifest problems, for the API;
//! - `state`: what the agent holds: one value per pod, one per container.

mod adopt;
mod args;
mod event_loop;
mod executor;
mod hooks;
mod images;
mod probes;
mod publish;
mod sandbox;
mod state;
mod storage;
mod supervise;
mod sync;
mod terminate;

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::SignalFd;
use specs::NodeInfo;

pub use args::{config_args, Args, ConfigError, LogFormat};
use event_loop::Token;
use state::{ContainerRun, Pod, PodRun};

use crate::events::Kind;
use crate::runtime::{Runtime, RuntimeError};
use crate::watch::Sources;

/// Why the agent could not start, or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error(transparent)]
    Record(#[from] crate::records::RecordError),
    #[error("the image store")]
    Images(#[source] crate::image::ImageError),
    #[error("cgroups")]
    Cgroups(#[source] crate::cgroups::CgroupError),
    #[error("{}", path.display())]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("--reserved-cpus {0:?}: {1}")]
    ReservedCpus(String, String),
    #[error("the CPU manager")]
    CpuManager(#[source] crate::cpu_manager::CpuManagerError),
    #[error("the registry settings")]
    Registry(#[source] crate::image::registry::RegistryError),
    #[error("image GC: {0}")]
    ImageGc(String),
    #[error("--pod-cidr {cidr}: {reason}")]
    PodCidr { cidr: String, reason: String },
    #[error("--api-group {0}: no such group")]
    NoSuchGroup(String),
    #[error("network")]
    Network(#[source] netplug::NetError),
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("the API")]
    Api(#[source] crate::api::ApiError),
    #[error("the Kubernetes API's credentials")]
    KubeAccess(#[source] crate::kube::access::AccessError),
    #[error("the pods dir")]
    Watch(#[source] crate::watch::WatchError),
    #[error("cleaning up")]
    Gc(#[source] RuntimeError),
    #[error("cleaning up the network")]
    NetGc(#[source] netplug::NetError),
    #[error("pod {pod}: its sandbox")]
    Sandbox {
        pod: String,
        #[source]
        source: Box<sandbox::SandboxError>,
    },
}

/// A probe attempt's result, sent by its thread.
#[derive(Debug)]
struct ProbeResult {
    id: (String, String),
    pid: i32,
    kind: crate::probe::Kind,
    result: Result<(), crate::probe::ProbeError>,
}

#[derive(Debug)]
pub struct Agent {
    args: Args,
    node: NodeInfo,
    rt: Arc<Runtime>,
    net: Option<netplug::Network>,
    /// Container starts, on the pool's threads.
    starter: crate::starter::Starter,
    sources: Sources,
    /// Every pod the node has, by `namespace/name`: running or being
    /// stopped.
    pods: BTreeMap<String, Pod>,
    /// inotify on the running containers' state dirs (`exit.json`).
    exits: Inotify,
    /// What the API serves.
    view: crate::api::Shared,
    /// Manifest problems and conflicts last reported as events.
    reported: Vec<String>,
    /// Probe attempts run on threads; they send their result here and
    /// write a byte to `wake` so the loop wakes (as finished starts do).
    probe_tx: std::sync::mpsc::Sender<ProbeResult>,
    probe_rx: std::sync::mpsc::Receiver<ProbeResult>,
    /// Lifecycle hooks run on threads, and report likewise.
    hook_tx: std::sync::mpsc::Sender<hooks::HookResult>,
    hook_rx: std::sync::mpsc::Receiver<hooks::HookResult>,
    wake: (UnixStream, UnixStream),
    /// The shims this agent spawned (its children), to reap.
    children: Vec<i32>,
    image_gc: images::ImageGc,
    storage: storage::StorageCheck,
    /// `--git-repo`: the sync's state.
    sync: Option<sync::SyncState>,
    /// Each shown pod condition's status and when it last changed, by pod
    /// uid and condition (`lastTransitionTime`).
    transitions: BTreeMap<(String, String), (String, String)>,
    /// Each shown pod's first sight (`kubelet_pod_start_duration_seconds`).
    first_seen: BTreeMap<String, publish::FirstSight>,
}

impl Agent {
    pub fn new(args: Args, podagent: PathBuf) -> Result<Self, DaemonError> {
        // Before anything is touched: a newer agent's records are not ours
        // to misread.
        crate::records::check(&args.state_dir)?;
        let node = args.policy.node_info(&args.seccomp_dir());
        let images = crate::image::ImageStore::open(&args.root_dir.join("store"))
            .map_err(DaemonError::Images)?;
        let cgroups = crate::cgroups::detect(Path::new("/proc/self/mountinfo"))
            .map_err(DaemonError::Cgroups)?
            .driver();
        std::fs::create_dir_all(&args.state_dir).map_err(|source| DaemonError::Dir {
            path: args.state_dir.clone(),
            source,
        })?;
        let cpus = match args.cpu_manager_policy {
            args::CpuManagerPolicy::None => None,
            args::CpuManagerPolicy::Static => {
                // The kubelet refuses the static policy without a reservation.
                let reserved = args.reserved_cpus.clone().unwrap_or_default();
                let parsed = specs::cpuset::CpuSet::parse(&reserved).map_err(|e| {
                    DaemonError::ReservedCpus(
                        reserved.clone(),
                        format!("{e} (the static policy needs CPUs reserved for the system)"),
                    )
                })?;
                let online = node.cpus.clone().ok_or_else(|| {
                    DaemonError::ReservedCpus(
                        reserved.clone(),
                        "the online CPUs are unknown".into(),
                    )
                })?;
                Some(
                    crate::cpu_manager::CpuManager::open(&args.state_dir, online, parsed)
                        .map_err(DaemonError::CpuManager)?,
                )
            }
        };
        let rt = Arc::new(Runtime {
            state_dir: args.state_dir.clone(),
            images,
            cgroups,
            cgroup_root: args.cgroup_root.clone(),
            podagent,
            cpus,
            seccomp_dir: args.seccomp_dir(),
            host_ip: args.node_ip.clone().or_else(crate::node::host_ip),
            registry: if args.pull_images {
                Some(crate::image::registry::Client::new(
                    args.registry.config().map_err(DaemonError::Registry)?,
                ))
            } else {
                None
            },
        });
        let net = if args.no_network {
            None
        } else {
            let mut cfg = netplug::Config::new(args.state_dir.join("net"));
            cfg.bridge = args.bridge.clone();
            cfg.cidr = args.pod_cidr.parse().map_err(|e| DaemonError::PodCidr {
                cidr: args.pod_cidr.clone(),
                reason: format!("{e}"),
            })?;
            let n = netplug::Network::new(cfg).map_err(DaemonError::Network)?;
            n.init().map_err(DaemonError::Network)?;
            Some(n)
        };
        let exits =
            Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(|source| {
                DaemonError::Sys {
                    what: "inotify",
                    source,
                }
            })?;
        let (probe_tx, probe_rx) = std::sync::mpsc::channel();
        let (hook_tx, hook_rx) = std::sync::mpsc::channel();
        let io = |what| move |source| DaemonError::Io { what, source };
        let wake = UnixStream::pair().map_err(io("socketpair"))?;
        wake.0.set_nonblocking(true).map_err(io("socketpair"))?;
        let starter = crate::starter::Starter::new(
            rt.clone(),
            usize::from(args.parallel_starts),
            usize::from(args.max_parallel_image_pulls),
            &wake.1,
        )
        .map_err(io("start threads"))?;
        let json_log = args.log_format == LogFormat::Json;
        let image_gc = images::ImageGc::new(args.image_gc_policy().map_err(DaemonError::ImageGc)?);
        Ok(Agent {
            sources: Sources::new(args.pods_dir_recursive)
                .with_link_root(args.pods_dir_link_root.clone()),
            args,
            node,
            rt,
            net,
            starter,
            pods: BTreeMap::new(),
            exits,
            view: Arc::new(std::sync::Mutex::new(crate::api::View {
                events: crate::events::Events::new(json_log),
                ..Default::default()
            })),
            reported: Vec::new(),
            probe_tx,
            probe_rx,
            hook_tx,
            hook_rx,
            wake,
            children: Vec::new(),
            image_gc,
            storage: storage::StorageCheck::new(),
            sync: None,
            transitions: BTreeMap::new(),
            first_seen: BTreeMap::new(),
        })
    }

    fn api_group(&self) -> Result<Option<u32>, DaemonError> {
        let Some(g) = &self.args.api_group else {
            return Ok(None);
        };
        if let Ok(gid) = g.parse::<u32>() {
            return Ok(Some(gid));
        }
        match nix::unistd::Group::from_name(g) {
            Ok(Some(group)) => Ok(Some(group.gid.as_raw())),
            _ => Err(DaemonError::NoSuchGroup(g.clone())),
        }
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(&mut self) -> Result<(), DaemonError> {
        let pods_dir = self.args.pods_dir.clone();
        std::fs::create_dir_all(&pods_dir).map_err(|source| DaemonError::Dir {
            path: pods_dir.clone(),
            source,
        })?;
        let mut dir_watch = crate::watch::DirWatch::new(
            &pods_dir,
            self.args.pods_dir_recursive,
            self.args.pods_dir_link_root.as_deref(),
        )
        .map_err(DaemonError::Watch)?;
        let mut mask = SigSet::empty();
        mask.add(Signal::SIGTERM);
        mask.add(Signal::SIGINT);
        let sys = |what| move |source| DaemonError::Sys { what, source };
        mask.thread_block().map_err(sys("sigprocmask"))?;
        let signals = SignalFd::new(&mask).map_err(sys("signalfd"))?;
        let socket = self.args.api_socket();
        let events = self.args.state_dir.join("events.jsonl");
        if let Ok(mut v) = self.view.lock() {
            if let Err(e) = v.events.persist(&events) {
                eprintln!(
                    "podagent: the event journal {}: {e}: events are kept in memory only",
                    events.display()
                );
            }
        }
        let kube = match self.args.kube_api_address {
            Some(addr) => Some(Arc::new(
                crate::kube::access::prepare(&self.args.root_dir.join("kube-api"), addr)
                    .map_err(DaemonError::KubeAccess)?,
            )),
            None => None,
        };
        self.start_sync()?;
        let sync_now = self.sync_now();
        let server = || -> Result<crate::api::Server, DaemonError> {
            Ok(crate::api::Server {
                view: self.view.clone(),
                state_dir: self.args.state_dir.clone(),
                cgroups: crate::cgroups::detect(Path::new("/proc/self/mountinfo"))
                    .map_err(DaemonError::Cgroups)?
                    .driver(),
                cgroup_root: self.args.cgroup_root.clone(),
                kube: kube.clone(),
                sync_now: sync_now.clone(),
            })
        };
        crate::api::serve(&socket, self.api_group()?, server()?).map_err(DaemonError::Api)?;
        if let Some(addr) = self.args.metrics_address {
            crate::api::serve_metrics(addr, server()?).map_err(DaemonError::Api)?;
        }
        if let (Some(addr), Some(access)) = (self.args.kube_api_address, &kube) {
            crate::api::serve_kube(addr, server()?, access.clone()).map_err(DaemonError::Api)?;
        }
        self.sources.resync(&pods_dir, &self.node);
        self.adopt()?;
        self.collect_images();
        let resync = Duration::from_secs(self.args.resync_secs);
        let mut last_resync = Instant::now();
        loop {
            self.enforce_deadlines();
            let wake = self.reconcile();
            self.run_probes();
            self.check_storage();
            self.enforce_kills();
            if self.progress_terminations() {
                continue; // a pod is gone: plan again (it may be recreated)
            }
            let resync_at = last_resync + resync;
            let until = event_loop::wake_at(self.next_timer().into_iter().chain(wake), resync_at);
            let ms = event_loop::timeout_ms(Instant::now(), until);
            let ready = {
                // In the order they are handled: results first, then the
                // shims, then the signals (after which nothing else is).
                let mut fds = vec![(Token::Wake, self.wake.0.as_fd())];
                for (key, pod) in &self.pods {
                    let Pod::Live(run) = pod else { continue };
                    for (name, c) in run.containers.iter() {
                        if let Some(shim) = &c.shim {
                            let token = Token::Shim {
                                pod: key.clone(),
                                container: name.clone(),
                            };
                            fds.push((token, shim.pidfd.as_fd()));
                        }
                    }
                }
                fds.push((Token::Signals, signals.as_fd()));
                fds.push((Token::PodsDir, dir_watch.as_fd()));
                fds.push((Token::Exits, self.exits.as_fd()));
                event_loop::wait(&fds, ms).map_err(sys("poll"))?
            };
            self.reap_children();
            let mut stop = false;
            for token in ready {
                match token {
                    Token::Wake => {
                        self.drain_wake();
                        self.probe_results();
                        self.hook_results();
                        self.storage_results();
                        self.start_results();
                        self.sync_results();
                    }
                    Token::Shim { pod, container } => self.shim_gone(&pod, &container),
                    Token::Signals => {
                        stop = true;
                        break;
                    }
                    Token::PodsDir => match dir_watch.changes() {
                        crate::watch::Changes::Resync => {
                            self.sources.resync(&pods_dir, &self.node);
                        }
                        crate::watch::Changes::Files(paths) => {
                            for p in paths {
                                self.sources.refresh(&p, &self.node);
                            }
                        }
                    },
                    Token::Exits => self.collect_exits(),
                }
            }
            if stop {
                break;
            }
            if Instant::now() >= resync_at {
                self.sources.resync(&pods_dir, &self.node);
                self.collect_images();
                last_resync = Instant::now();
            }
        }
        // The starts in flight are finished and recorded first, so a
        // container is neither left unrecorded (the next agent would take it
        // for an orphan) nor missed by the stop below. A start still waiting
        // on its image's pull is not waited for: it has made nothing yet.
        while self.starter.starts_in_flight() > 0 {
            match self.starter.wait(Duration::from_secs(60)) {
                Some(done) => self.finish_start(done),
                None => break,
            }
        }
        if self.args.stop_pods_on_exit {
            self.stop_every_pod();
        }
        if let Err(e) = std::fs::remove_file(&socket) {
            eprintln!("podagent: removing {}: {e}", socket.display());
        }
        Ok(())
    }

    /// Plans and executes until nothing is left to do (bounded: a failing
    /// action cannot spin); when to wake for a back-off.
    fn reconcile(&mut self) -> Option<Instant> {
        let mut wake = None;
        for i in 0..16 {
            let (acted, w) = self.pass(i == 15);
            wake = w;
            if !acted {
                break;
            }
        }
        wake
    }

    /// The first timer the loop must wake for: a probe due, a kill
    /// deadline, a termination's.
    fn next_timer(&self) -> Option<Instant> {
        let mut first: Option<Instant> = None;
        let mut at = |t: Instant| first = Some(first.map_or(t, |f| f.min(t)));
        for pod in self.pods.values() {
            match pod {
                Pod::Terminating(t) => at(t.next_at()),
                Pod::Live(run) => {
                    for c in run.containers.values() {
                        let probe = c.probes.as_ref().and_then(|p| p.next_at());
                        probe.into_iter().chain(c.kill_at).for_each(&mut at);
                    }
                }
            }
        }
        if let Some(d) = self.next_deadline() {
            at(d);
        }
        if let Some(d) = self.trial_deadline() {
            at(d);
        }
        // Storage is measured only while a pod has a limit.
        let limited = self.pods.iter().any(|(key, pod)| {
            matches!(pod, Pod::Live(run) if run.evicted.is_none())
                && self.sources.pod(key).is_some_and(storage::has_limit)
        });
        if limited {
            at(self.storage.next_at);
        }
        first
    }

    /// Empties the wake socket (its bytes only say "look").
    fn drain_wake(&mut self) {
        let mut buf = [0u8; 256];
        while matches!(std::io::Read::read(&mut &self.wake.0, &mut buf), Ok(n) if n > 0) {}
    }

    fn live(&self, key: &str) -> Option<&PodRun> {
        match self.pods.get(key) {
            Some(Pod::Live(run)) => Some(run),
            _ => None,
        }
    }

    fn live_mut(&mut self, key: &str) -> Option<&mut PodRun> {
        match self.pods.get_mut(key) {
            Some(Pod::Live(run)) => Some(run),
            _ => None,
        }
    }

    fn container_mut(&mut self, key: &str, name: &str) -> Option<&mut ContainerRun> {
        self.live_mut(key)?.containers.get_mut(name)
    }

    /// A failure the loop lives with: a warning event (and its log line)
    /// with the whole error chain; the value when there is none.
    fn report<T, E: std::error::Error>(
        &self,
        result: Result<T, E>,
        reason: &str,
        key: &str,
        container: Option<&str>,
    ) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(e) => {
                let message = crate::error_chain(&e);
                self.event(Kind::Warning, reason, key, container, message);
                None
            }
        }
    }

    /// SIGKILL to everything in a container's cgroup.
    fn kill(&self, key: &str, uid: &str, name: &str) {
        self.report(
            self.rt.kill_container(uid, name),
            "FailedKill",
            key,
            Some(name),
        );
    }

    /// Watches a container's state dir for its `exit.json`. Without the
    /// watch its exit is still seen through its shim's pidfd: a failure is
    /// an event, not an error.
    fn watch_exit(&self, key: &str, name: &str, state: &Path) -> Option<WatchDescriptor> {
        match self.exits.add_watch(state, AddWatchFlags::IN_MOVED_TO) {
            Ok(wd) => Some(wd),
            Err(e) => {
                let message = format!("watching its state dir: {e}");
                self.event(Kind::Warning, "Degraded", key, Some(name), message);
                None
            }
        }
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
}

fn now_rfc3339() -> String {
    crate::shim::logs::rfc3339_nano(std::time::SystemTime::now())
}
