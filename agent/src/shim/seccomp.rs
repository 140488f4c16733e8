//! An OCI `LinuxSeccomp` profile compiled with libseccomp and loaded into the
//! calling process (the container's init, right before exec).

use std::str::FromStr;

use libseccomp::{
    ScmpAction, ScmpArch, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall,
};
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};

fn action(
    a: LinuxSeccompAction,
    errno: Option<u32>,
    default_errno: u32,
) -> Result<ScmpAction, String> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => ScmpAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            ScmpAction::Errno(errno.unwrap_or(default_errno) as i32)
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            ScmpAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => ScmpAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => ScmpAction::Trap,
        LinuxSeccompAction::ScmpActLog => ScmpAction::Log,
        LinuxSeccompAction::ScmpActTrace => ScmpAction::Trace(errno.unwrap_or(0) as u16),
        other => return Err(format!("seccomp action {other:?} is not supported")),
    })
}

fn op(o: LinuxSeccompOperator, value_two: u64, value: u64) -> (ScmpCompareOp, u64) {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => (ScmpCompareOp::NotEqual, value),
        LinuxSeccompOperator::ScmpCmpLt => (ScmpCompareOp::Less, value),
        LinuxSeccompOperator::ScmpCmpLe => (ScmpCompareOp::LessOrEqual, value),
        LinuxSeccompOperator::ScmpCmpEq => (ScmpCompareOp::Equal, value),
        LinuxSeccompOperator::ScmpCmpGe => (ScmpCompareOp::GreaterEqual, value),
        LinuxSeccompOperator::ScmpCmpGt => (ScmpCompareOp::Greater, value),
        // OCI: value is the mask, valueTwo the datum.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (ScmpCompareOp::MaskedEqual(value), value_two),
    }
}

/// What the compiler makes, in the cache key: a change to `compile`'s output
/// bumps it, so a cache written by an older agent is not read.
const COMPILER: &[u8] = b"podagent-seccomp-2 binary-tree\n";

/// The profile compiled to classic BPF: read from `cache` when it holds this
/// profile (keyed by the SHA-256 of the compiler tag and the profile's JSON),
/// else compiled with libseccomp (about 15 ms for the default profile) and
/// stored there. Loading the program in the container's init then costs one
/// syscall.
pub fn program(profile: &LinuxSeccomp, cache: Option<&std::path::Path>) -> Result<Vec<u8>, String> {
    use std::io::{Read, Seek};
    let json = serde_json::to_vec(profile).map_err(|e| e.to_string())?;
    let key = specs::hash::sha256_hex(&[COMPILER, &json].concat());
    let cached = cache.map(|d| d.join(format!("{key}.bpf")));
    if let Some(bytes) = cached.as_ref().and_then(|p| std::fs::read(p).ok()) {
        if !bytes.is_empty() && bytes.len() % 8 == 0 && bytes.len() <= 8 * 65535 {
            return Ok(bytes);
        }
    }
    let ctx = compile(profile)?;
    let mut f = tempfile::tempfile().map_err(|e| format!("seccomp: temp file: {e}"))?;
    ctx.export_bpf(&f)
        .map_err(|e| format!("seccomp: export: {e}"))?;
    let mut bytes = Vec::new();
    f.rewind()
        .and_then(|_| f.read_to_end(&mut bytes))
        .map_err(|e| format!("seccomp: read back: {e}"))?;
    if let (Some(path), Some(dir)) = (&cached, cache) {
        // A cache that cannot be written only costs time.
        if std::fs::create_dir_all(dir).is_ok() {
            let tmp = dir.join(format!(".{key}.{}.tmp", std::process::id()));
            if std::fs::write(&tmp, &bytes).is_ok() {
                let _ = std::fs::rename(&tmp, path);
            }
        }
    }
    Ok(bytes)
}

/// Builds the filter. Syscall names this libseccomp does not know are
/// skipped (newer than the library), as runc does.
pub fn compile(profile: &LinuxSeccomp) -> Result<ScmpFilterContext, String> {
    let default_errno = profile.default_errno_ret().unwrap_or(1);
    let e = |what: &str, err: libseccomp::error::SeccompError| format!("seccomp {what}: {err}");
    let mut ctx = ScmpFilterContext::new(action(profile.default_action(), None, default_errno)?)
        .map_err(|err| e("init", err))?;
    // no_new_privs is set by the init itself, in its own step.
    ctx.set_ctl_nnp(false).map_err(|err| e("nnp", err))?;
    // A binary tree over syscall numbers rather than one long list: the
    // kernel runs the filter once per syscall number when it is attached
    // (to cache the always-allowed ones), so a list of ~400 rules made that
    // attach cost 1.3 ms of each container's start; the tree, 0.5 ms. Every
    // filtered syscall in the container is cheaper too.
    ctx.set_ctl_optimize(2).map_err(|err| e("optimize", err))?;
    for a in profile.architectures().iter().flatten() {
        let name = serde_json::to_value(a)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        if let Ok(arch) = ScmpArch::from_str(&name) {
            if !ctx.is_arch_present(arch).unwrap_or(false) {
                ctx.add_arch(arch).map_err(|err| e("add arch", err))?;
            }
        }
    }
    for rule in profile.syscalls().iter().flatten() {
        let act = action(rule.action(), rule.errno_ret(), default_errno)?;
        let conds: Vec<ScmpArgCompare> = rule
            .args()
            .iter()
            .flatten()
            .map(|a| {
                let (o, datum) = op(a.op(), a.value_two().unwrap_or(0), a.value());
                ScmpArgCompare::new(a.index() as u32, o, datum)
            })
            .collect();
        for name in rule.names() {
            let Ok(sys) = ScmpSyscall::from_name(name) else {
                continue;
            };
            if act == profile_default(profile, default_errno)? {
                continue; // libseccomp refuses rules equal to the default
            }
            let r = if conds.is_empty() {
                ctx.add_rule(act, sys)
            } else {
                ctx.add_rule_conditional(act, sys, &conds)
            };
            r.map_err(|err| e(&format!("rule for {name}"), err))?;
        }
    }
    Ok(ctx)
}

fn profile_default(p: &LinuxSeccomp, default_errno: u32) -> Result<ScmpAction, String> {
    action(p.default_action(), None, default_errno)
}
