//! podagent and podctl: the daemon that runs the pods of a directory, and the
//! CLI that shows and manages them. The binaries in `src/bin` only parse,
//! dispatch and map errors to exit codes; behaviour lives here.

pub mod api;
pub mod cgroups;
pub mod cli;
pub mod daemon;
pub mod events;
pub mod image;
pub mod node;
pub mod probe;
pub mod reconcile;
pub mod records;
pub mod runtime;
pub mod shim;
pub mod starter;
pub mod sys;
pub mod watch;
