//! The agent end to end: `podagent run` on a pods dir of the test's, in a
//! network namespace of the test's own, observed through `podctl`, the API
//! and the kernel. One file per feature; all share `support`.

#[path = "../support/mod.rs"]
mod support;

mod adoption;
mod clients;
mod config;
mod cpu_manager;
mod downward;
mod failures;
mod gitsync;
mod hierarchy;
mod hooks;
mod host_ports;
mod kubectl;
mod lifecycle;
mod metrics;
mod pods_dir;
mod policy;
mod probes;
mod storage;
mod terminal;
mod userns;
