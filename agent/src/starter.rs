//! Pod starts off the loop. A fixed pool of threads runs the slow steps of
//! starting a pod (its sandbox: namespaces, network, cgroup; each
//! container's `Runtime::start`: the overlay rootfs, the bundle, the
//! container cgroup, the shim until it reports the exec), so a pod whose
//! start is slow holds up no other, and the starts of a burst overlap. The
//! loop hands work over and goes on; each result comes back through a
//! channel, with a byte on the loop's wake socket.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use specs::plan::ContainerPlan;
use specs::PodPlan;

use crate::runtime::sandbox::Sandbox;

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

type Work<T> = Box<dyn FnOnce() -> T + Send>;

/// A pool of threads running work of the loop's and sending back its `T`.
#[derive(Debug)]
pub struct Starter<T> {
    work: Option<Sender<Work<T>>>,
    done: Receiver<T>,
    workers: Vec<std::thread::JoinHandle<()>>,
}

impl<T: Send + 'static> Starter<T> {
    /// `workers` threads (at least one); each finished piece of work
    /// writes a byte to `wake`.
    pub fn new(workers: usize, wake: &UnixStream) -> std::io::Result<Self> {
        let (work, queue) = channel::<Work<T>>();
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
        let spawned = (|| {
            for i in 0..workers.max(1) {
                let (queue, done_tx) = (queue.clone(), done_tx.clone());
                let mut wake = wake.try_clone()?;
                handles.push(
                    std::thread::Builder::new()
                        .name(format!("start-{i}"))
                        .spawn(move || loop {
                            // The lock is held only while taking work.
                            let next = queue.lock().map(|q| q.recv());
                            let Ok(Ok(work)) = next else {
                                return; // the agent is done with the pool
                            };
                            if done_tx.send(work()).is_err() {
                                return;
                            }
                            let _ = wake.write_all(b"s");
                        })?,
                );
            }
            Ok::<(), std::io::Error>(())
        })();
        let _ = old.thread_set_mask();
        spawned?;
        Ok(Starter {
            work: Some(work),
            done,
            workers: handles,
        })
    }

    pub fn submit(&self, work: impl FnOnce() -> T + Send + 'static) {
        if let Some(tx) = &self.work {
            // Workers only stop when the pool is dropped.
            let _ = tx.send(Box::new(work));
        }
    }

    /// The results so far, without waiting.
    pub fn finished(&self) -> Vec<T> {
        self.done.try_iter().collect()
    }

    /// The next result, waiting at most `timeout`.
    pub fn wait(&self, timeout: Duration) -> Option<T> {
        self.done.recv_timeout(timeout).ok()
    }
}

impl<T> Drop for Starter<T> {
    fn drop(&mut self) {
        self.work = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
