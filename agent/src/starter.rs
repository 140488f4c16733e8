//! Container starts off the loop. A fixed pool of threads runs
//! `Runtime::start` (the overlay rootfs, the bundle, the container cgroup,
//! the shim until it reports the exec), so a container whose start is slow
//! holds up no other pod, and the starts of a burst overlap. The loop hands
//! a `Job` over and goes on; each `Done` comes back through a channel, with
//! a byte on the loop's wake socket. The pool knows which starts are in
//! flight: a pod being stopped is not removed while one still writes into
//! its directories.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use specs::plan::ContainerPlan;
use specs::PodPlan;

use crate::records::{ContainerRecord, RecordError};
use crate::runtime::sandbox::Sandbox;
use crate::runtime::{Handle, Runtime, RuntimeError};

/// One container to start, with what the loop decided about it.
#[derive(Debug)]
pub struct Job {
    /// (pod key, container name).
    pub id: (String, String),
    pub pod: PodPlan,
    pub container: ContainerPlan,
    pub sandbox: Sandbox,
    pub net_ns: Option<PathBuf>,
    /// The restart count and crash count the run will have.
    pub restarts: u32,
    pub crashes: u32,
}

impl Job {
    /// The agent's record of the run (`agent.json` in the container's
    /// directory), what a restarted agent adopts it by.
    pub fn record(&self) -> ContainerRecord {
        ContainerRecord {
            hash: self.container.hash.clone(),
            resources: serde_json::to_value(&self.container.resources).unwrap_or_default(),
            restart_count: self.restarts,
            crashes: self.crashes,
        }
    }
}

/// A start finished: the container runs, or why it does not.
#[derive(Debug)]
pub struct Done {
    pub job: Job,
    pub result: Result<Handle, RuntimeError>,
    /// Writing the run's record, once it runs (written here, fsynced, so
    /// that the loop does not wait on the disk).
    pub recorded: Result<(), RecordError>,
    /// The image pulled before the start, if one was.
    pub pulled: Option<crate::runtime::Pulled>,
}

#[derive(Debug)]
pub struct Starter {
    /// The starts handed over and not yet taken back, by (pod key,
    /// container name), with their pod's uid.
    in_flight: BTreeMap<(String, String), String>,
    jobs: Option<Sender<Job>>,
    done: Receiver<Done>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl Starter {
    /// `workers` threads (at least one) starting containers with `rt`; each
    /// finished start writes a byte to `wake`.
    pub fn new(rt: Arc<Runtime>, workers: usize, wake: &UnixStream) -> std::io::Result<Self> {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let (done_tx, done) = channel();
        let mut handles = Vec::new();
        // The workers inherit a mask blocking every signal: SIGTERM and
        // SIGINT are the loop's (through its signalfd), and a thread that
        // let them through would take the default action for the whole
        // agent. (The shims they spawn start with an empty mask.)
        let all = nix::sys::signal::SigSet::all();
        let old = all
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
            .map_err(std::io::Error::from)?;
        let spawned = Self::spawn(&rt, workers, wake, &queue, &done_tx, &mut handles);
        let _ = old.thread_set_mask();
        spawned?;
        Ok(Starter {
            in_flight: BTreeMap::new(),
            jobs: Some(jobs),
            done,
            workers: handles,
        })
    }

    fn spawn(
        rt: &Arc<Runtime>,
        workers: usize,
        wake: &UnixStream,
        queue: &Arc<Mutex<Receiver<Job>>>,
        done_tx: &Sender<Done>,
        handles: &mut Vec<std::thread::JoinHandle<()>>,
    ) -> std::io::Result<()> {
        for i in 0..workers.max(1) {
            let (rt, queue, done_tx) = (rt.clone(), queue.clone(), done_tx.clone());
            let mut wake = wake.try_clone()?;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("start-{i}"))
                    .spawn(move || loop {
                        // The lock is held only while taking a job.
                        let next = queue.lock().map(|q| q.recv());
                        let Ok(Ok(job)) = next else {
                            return; // the agent is done with the pool
                        };
                        // A pull happens here, on the worker: the loop and the
                        // other starts go on.
                        let (pulled, result) = match rt.ensure_image(&job.container) {
                            Ok(pulled) => (
                                pulled,
                                rt.start(
                                    &job.pod,
                                    &job.sandbox,
                                    job.net_ns.as_deref(),
                                    &job.container,
                                ),
                            ),
                            Err(e) => (None, Err(e)),
                        };
                        let recorded = match &result {
                            Ok(h) => {
                                crate::records::write(&h.dir.join("agent.json"), &job.record())
                            }
                            Err(_) => Ok(()),
                        };
                        let done = Done {
                            job,
                            result,
                            recorded,
                            pulled,
                        };
                        if done_tx.send(done).is_err() {
                            return;
                        }
                        let _ = wake.write_all(b"s");
                    })?,
            );
        }
        Ok(())
    }

    pub fn submit(&mut self, job: Job) {
        if let Some(tx) = &self.jobs {
            self.in_flight.insert(job.id.clone(), job.pod.uid.clone());
            // Workers only stop when the pool is dropped.
            if let Err(e) = tx.send(job) {
                self.in_flight.remove(&e.0.id);
            }
        }
    }

    /// The container's start is in flight.
    pub fn is_starting(&self, id: &(String, String)) -> bool {
        self.in_flight.contains_key(id)
    }

    /// A start for the pod of this uid is in flight.
    pub fn starting_for(&self, uid: &str) -> bool {
        self.in_flight.values().any(|u| u == uid)
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The starts finished so far, without waiting.
    pub fn finished(&mut self) -> Vec<Done> {
        let done: Vec<Done> = self.done.try_iter().collect();
        for d in &done {
            self.in_flight.remove(&d.job.id);
        }
        done
    }

    /// The next start to finish, waiting at most `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> Option<Done> {
        let d = self.done.recv_timeout(timeout).ok()?;
        self.in_flight.remove(&d.job.id);
        Some(d)
    }
}

impl Drop for Starter {
    fn drop(&mut self) {
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
