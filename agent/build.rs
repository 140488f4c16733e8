//! The shim binary is linked as a position-dependent executable: its
//! relocated data (`.data.rel.ro`, about 250 KiB) then needs no fixing up at
//! start, so those pages stay clean and are shared by every shim instead of
//! being copied into each one. See README, "podagent-shim".
fn main() {
    println!("cargo:rustc-link-arg-bin=podagent-shim=-no-pie");
    println!("cargo:rerun-if-changed=build.rs");
}
