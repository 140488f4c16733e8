//! Container starts off the loop. A fixed pool of threads runs
//! `Runtime::start` (the overlay rootfs, the bundle, the container cgroup,
//! the shim until it reports the exec), so a container whose start is slow
//! holds up no other pod, and the starts of a burst overlap. The loop hands
//! a `Job` over and goes on; each `Done` comes back through a channel, with
//! a byte on the loop's wake socket. The pool knows which starts are in
//! flight: a pod being stopped is not removed while one still writes into
//! its directories.
//!
//! Pulls have a pool of their own (`--max-parallel-image-pulls` threads), so
//! a slow registry holds up no start: a worker that finds a container's
//! image must be pulled hands the job to the pull pool and takes the next
//! one. The pool pulls each image once for all the jobs waiting on it (ten
//! pods of one image: one pull), then hands them back to the start queue,
//! or reports the failure for each.

use std::collections::{BTreeMap, VecDeque};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
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
    /// Its image, once the pull pool has pulled it for this start.
    pub pulled: Option<crate::runtime::Pulled>,
}

impl Job {
    /// The agent's record of the run (`agent.json` in the container's
    /// directory), what a restarted agent adopts it by.
    pub fn record(&self, image_id: &str) -> ContainerRecord {
        ContainerRecord {
            hash: self.container.hash.clone(),
            resources: serde_json::to_value(&self.container.resources).unwrap_or_default(),
            restart_count: self.restarts,
            crashes: self.crashes,
            image_id: image_id.to_string(),
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
    /// The start queue's sender, shared with the pull pool (which hands
    /// pulled jobs back); `None` once the pool is dropped.
    jobs: Arc<Mutex<Option<Sender<Job>>>>,
    pulls: Arc<Pulls>,
    done: Receiver<Done>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// The pull pool's queue: the images to pull, in order, and the jobs waiting
/// on each (one entry per image while its pull is queued or running).
#[derive(Debug, Default)]
struct Pulls {
    state: Mutex<PullState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct PullState {
    queue: VecDeque<String>,
    waiting: BTreeMap<String, Vec<Job>>,
    closed: bool,
}

impl Pulls {
    /// Queues `job` behind the pull of its image, joining one already
    /// queued or running.
    fn submit(&self, job: Job) {
        let key = crate::image::normalise_reference(&job.container.image)
            .unwrap_or_else(|_| job.container.image.clone());
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match st.waiting.get_mut(&key) {
            Some(jobs) => jobs.push(job),
            None => {
                st.waiting.insert(key.clone(), vec![job]);
                st.queue.push_back(key);
                self.ready.notify_one();
            }
        }
    }

    /// The next image to pull and the container of a job waiting on it;
    /// waits for one, `None` once closed.
    fn take(&self) -> Option<(String, ContainerPlan)> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            if st.closed {
                return None;
            }
            if let Some(key) = st.queue.pop_front() {
                let c = st.waiting.get(&key).and_then(|j| j.first());
                if let Some(c) = c.map(|j| j.container.clone()) {
                    return Some((key, c));
                }
                continue;
            }
            st = self.ready.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// The jobs that waited on the pull of `key`, now done: a job queued
    /// after this waits on a pull of its own (an `Always` start resolves the
    /// tag again).
    fn finish(&self, key: &str) -> Vec<Job> {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.waiting.remove(key).unwrap_or_default()
    }

    /// Jobs waiting on a pull (queued or running).
    fn parked(&self) -> usize {
        let st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.waiting.values().map(Vec::len).sum()
    }

    fn close(&self) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        st.closed = true;
        self.ready.notify_all();
    }
}

impl Starter {
    /// `workers` threads (at least one) starting containers with `rt`, and
    /// `pullers` (at least one) pulling their images; each finished start
    /// writes a byte to `wake`.
    pub fn new(
        rt: Arc<Runtime>,
        workers: usize,
        pullers: usize,
        wake: &UnixStream,
    ) -> std::io::Result<Self> {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let (done_tx, done) = channel();
        let jobs = Arc::new(Mutex::new(Some(jobs)));
        let pulls = Arc::new(Pulls::default());
        let mut handles = Vec::new();
        // The threads inherit a mask blocking every signal: SIGTERM and
        // SIGINT are the loop's (through its signalfd), and a thread that
        // let them through would take the default action for the whole
        // agent. (The shims they spawn start with an empty mask.)
        let all = nix::sys::signal::SigSet::all();
        let old = all
            .thread_swap_mask(nix::sys::signal::SigmaskHow::SIG_BLOCK)
            .map_err(std::io::Error::from)?;
        let spawned = Self::spawn(&rt, workers, wake, &queue, &done_tx, &pulls, &mut handles)
            .and_then(|()| Self::spawn_pullers(&rt, pullers, wake, &jobs, &done_tx, &pulls));
        let _ = old.thread_set_mask();
        let starter = Starter {
            in_flight: BTreeMap::new(),
            jobs,
            pulls,
            done,
            workers: handles,
        };
        spawned?;
        Ok(starter)
    }

    fn spawn(
        rt: &Arc<Runtime>,
        workers: usize,
        wake: &UnixStream,
        queue: &Arc<Mutex<Receiver<Job>>>,
        done_tx: &Sender<Done>,
        pulls: &Arc<Pulls>,
        handles: &mut Vec<std::thread::JoinHandle<()>>,
    ) -> std::io::Result<()> {
        for i in 0..workers.max(1) {
            let (rt, queue, done_tx, pulls) =
                (rt.clone(), queue.clone(), done_tx.clone(), pulls.clone());
            let mut wake = wake.try_clone()?;
            handles.push(
                std::thread::Builder::new()
                    .name(format!("start-{i}"))
                    .spawn(move || loop {
                        // The lock is held only while taking a job.
                        let next = queue.lock().map(|q| q.recv());
                        let Ok(Ok(mut job)) = next else {
                            return; // the agent is done with the pool
                        };
                        // An image to pull goes to the pull pool, and comes
                        // back here once it is in the store.
                        if job.pulled.is_none() && rt.pulls(&job.container) {
                            pulls.submit(job);
                            continue;
                        }
                        let result = rt.never_pulled(&job.container).and_then(|()| {
                            rt.start(
                                &job.pod,
                                &job.sandbox,
                                job.net_ns.as_deref(),
                                &job.container,
                            )
                        });
                        let recorded = match &result {
                            Ok(h) => crate::records::write(
                                &h.dir.join("agent.json"),
                                &job.record(&h.image_id),
                            ),
                            Err(_) => Ok(()),
                        };
                        let pulled = job.pulled.take();
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

    /// The pull pool's threads. They are not joined when the pool is
    /// dropped: a pull may wait on a registry for its timeout, and the jobs
    /// it would hand back have nowhere to go.
    fn spawn_pullers(
        rt: &Arc<Runtime>,
        pullers: usize,
        wake: &UnixStream,
        jobs: &Arc<Mutex<Option<Sender<Job>>>>,
        done_tx: &Sender<Done>,
        pulls: &Arc<Pulls>,
    ) -> std::io::Result<()> {
        for i in 0..pullers.max(1) {
            let (rt, jobs, done_tx, pulls) =
                (rt.clone(), jobs.clone(), done_tx.clone(), pulls.clone());
            let mut wake = wake.try_clone()?;
            std::thread::Builder::new()
                .name(format!("pull-{i}"))
                .spawn(move || {
                    while let Some((key, c)) = pulls.take() {
                        let result = rt.pull_image(&c);
                        for mut job in pulls.finish(&key) {
                            match &result {
                                Ok(p) => {
                                    job.pulled = Some(p.clone());
                                    let tx = jobs.lock().unwrap_or_else(|e| e.into_inner());
                                    if let Some(tx) = tx.as_ref() {
                                        let _ = tx.send(job);
                                    }
                                }
                                Err(e) => {
                                    // The kubelet's ErrImagePull, one for each
                                    // start that waited on the pull.
                                    let result = Err(RuntimeError::Pull {
                                        reason: "ErrImagePull",
                                        image: job.container.image.clone(),
                                        source: e.clone(),
                                    });
                                    let done = Done {
                                        job,
                                        result,
                                        recorded: Ok(()),
                                        pulled: None,
                                    };
                                    if done_tx.send(done).is_err() {
                                        return;
                                    }
                                    let _ = wake.write_all(b"s");
                                }
                            }
                        }
                    }
                })?;
        }
        Ok(())
    }

    pub fn submit(&mut self, job: Job) {
        let jobs = self.jobs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = jobs.as_ref() {
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

    /// The jobs in flight that are past their pull: starts that will leave
    /// a container behind (what an exiting agent waits for; a pull has
    /// nothing to record yet).
    pub fn starts_in_flight(&self) -> usize {
        self.in_flight.len().saturating_sub(self.pulls.parked())
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
        self.pulls.close();
        *self.jobs.lock().unwrap_or_else(|e| e.into_inner()) = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
