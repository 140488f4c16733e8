//! podagent and podctl: the daemon that runs the pods of a directory, and the
//! CLI that shows and manages them. The binaries in `src/bin` only parse,
//! dispatch and map errors to exit codes; behaviour lives here.

pub mod api;
pub mod by_name;
pub mod cgroups;
pub mod cli;
pub mod cpu_manager;
pub mod daemon;
pub mod events;
pub mod gitsync;
pub mod image;
pub mod kube;
pub mod locate;
pub mod node;
pub mod probe;
pub mod reconcile;
pub mod records;
pub mod runtime;
pub mod shim;
pub mod starter;
pub mod status;
pub mod sys;
pub mod watch;

/// An error followed by its sources, `: `-separated: what a log line, an
/// event or the binary's last words show (each `Display` names only its own
/// step).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        out.push_str(": ");
        out.push_str(&s.to_string());
        next = s.source();
    }
    out
}
