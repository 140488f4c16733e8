//! `specs`: Kubernetes `v1 Pod` manifests, from YAML bytes to a fully resolved
//! [`PodPlan`] and one OCI runtime spec per container.
//!
//! No I/O beyond the bytes it is given: what it needs to know of the node comes
//! in a [`NodeInfo`].
#![forbid(unsafe_code)]

pub mod cpuset;
pub mod diag;
pub mod hash;
pub mod io;
pub mod load;
pub mod manifest;
pub mod names;
pub mod oci;
pub mod plan;
pub mod quantity;
pub mod resolve;

pub use diag::{Diagnostic, Severity};
pub use load::{load, FileReport};
pub use plan::PodPlan;
pub use resolve::NodeInfo;
