//! The device allowlist on cgroup v2: an eBPF program of type
//! `BPF_PROG_TYPE_CGROUP_DEVICE` attached to the container's cgroup, as runc
//! does (v2 has no `devices.allow` file). The kernel runs it on every open
//! and mknod of a device node by a member of the cgroup; it returns 1 to
//! allow, 0 to deny (EPERM).
//!
//! The program is generated from the rules: they are checked from the last
//! to the first (a later rule overrides an earlier one, as in the OCI spec),
//! each a block that returns its verdict when type, access, major and minor
//! match; nothing matching is denied. The context is
//! `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`,
//! `access_type` = access << 16 | type.

use std::os::fd::AsFd;
use std::path::Path;

use super::DeviceRule;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: u8,
    pub src: u8,
    pub off: i16,
    pub imm: i32,
}

const LDX_MEM_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JNE_K: u8 = 0x55;
const JMP_JNE_X: u8 = 0x5d;
const JMP_EXIT: u8 = 0x95;

const DEV_BLOCK: i32 = 1; // BPF_DEVCG_DEV_BLOCK
const DEV_CHAR: i32 = 2; // BPF_DEVCG_DEV_CHAR
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn {
        code,
        dst,
        src,
        off,
        imm,
    }
}

fn access_bits(access: &str) -> i32 {
    access.chars().fold(0, |a, c| {
        a | match c {
            'm' => ACC_MKNOD,
            'r' => ACC_READ,
            'w' => ACC_WRITE,
            _ => 0,
        }
    })
}

/// The program for `rules`.
pub fn program(rules: &[DeviceRule]) -> Vec<Insn> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut out = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xFFFF),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        // The checks of this block; each jumps past the block on mismatch.
        let mut checks: Vec<Vec<Insn>> = Vec::new();
        match r.kind {
            'c' => checks.push(vec![insn(JMP_JNE_K, 2, 0, 0, DEV_CHAR)]),
            'b' => checks.push(vec![insn(JMP_JNE_K, 2, 0, 0, DEV_BLOCK)]),
            _ => {}
        }
        let acc = access_bits(&r.access);
        if acc != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // The request's access must be within the rule's.
            checks.push(vec![
                insn(ALU64_MOV_X, 1, 3, 0, 0),
                insn(ALU64_AND_K, 1, 0, 0, acc),
                insn(JMP_JNE_X, 1, 3, 0, 0),
            ]);
        }
        if let Some(m) = r.major {
            checks.push(vec![insn(JMP_JNE_K, 4, 0, 0, m as i32)]);
        }
        if let Some(m) = r.minor {
            checks.push(vec![insn(JMP_JNE_K, 5, 0, 0, m as i32)]);
        }
        let verdict = [
            insn(ALU64_MOV_K, 0, 0, 0, i32::from(r.allow)),
            insn(JMP_EXIT, 0, 0, 0, 0),
        ];
        if checks.is_empty() {
            // It matches every request: nothing after it can be reached
            // (the verifier refuses unreachable code).
            out.extend(verdict);
            return out;
        }
        let total: usize = checks.iter().map(Vec::len).sum::<usize>() + verdict.len();
        let mut emitted = 0;
        for check in checks {
            for mut i in check {
                emitted += 1;
                if i.code == JMP_JNE_K || i.code == JMP_JNE_X {
                    // Past the rest of the block.
                    i.off = (total - emitted) as i16;
                }
                out.push(i);
            }
        }
        out.extend(verdict);
    }
    out.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    out.push(insn(JMP_EXIT, 0, 0, 0, 0));
    out
}

/// The program as the kernel reads it: 8 bytes an instruction.
pub fn bytes(program: &[Insn]) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for i in program {
        out.push(i.code);
        out.push((i.src << 4) | (i.dst & 0x0f));
        out.extend(i.off.to_ne_bytes());
        out.extend(i.imm.to_ne_bytes());
    }
    out
}

/// Loads the program for `rules` and attaches it to the v2 cgroup `dir`
/// (alongside any other: `BPF_F_ALLOW_MULTI`; the parents' still apply).
pub fn attach(dir: &Path, rules: &[DeviceRule]) -> Result<(), String> {
    let code = bytes(&program(rules));
    let prog = crate::sys::bpf_load_cgroup_device(&code)?;
    let cg = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("{}: {e}", dir.display()))?;
    crate::sys::bpf_attach_cgroup_device(cg.as_fd(), prog.as_fd())
        .map_err(|e| format!("attach the device filter to {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(
        allow: bool,
        kind: char,
        major: Option<i64>,
        minor: Option<i64>,
        access: &str,
    ) -> DeviceRule {
        DeviceRule {
            allow,
            kind,
            major,
            minor,
            access: access.into(),
        }
    }

    #[test]
    fn each_rule_is_a_block_checked_from_the_last() {
        let p = program(&[
            rule(false, 'a', None, None, "rwm"),
            rule(true, 'c', Some(1), Some(3), "rw"),
        ]);
        // Prologue, the allow block (type, access, major, minor, verdict),
        // the deny-all block (verdict only), which ends the program.
        assert_eq!(p.len(), 6 + (1 + 3 + 1 + 1 + 2) + 2);
        let block = &p[6..14];
        assert_eq!(
            (block[0].code, block[0].imm, block[0].off),
            (JMP_JNE_K, DEV_CHAR, 7)
        );
        assert_eq!((block[2].imm, block[3].off), (ACC_READ | ACC_WRITE, 4));
        assert_eq!((block[4].dst, block[4].imm, block[4].off), (4, 1, 3));
        assert_eq!((block[5].dst, block[5].imm, block[5].off), (5, 3, 2));
        assert_eq!((block[6].code, block[6].imm), (ALU64_MOV_K, 1));
        assert_eq!((p[14].code, p[14].imm), (ALU64_MOV_K, 0), "deny all");
        assert_eq!(p[15].code, JMP_EXIT);
        assert_eq!(bytes(&p).len(), p.len() * 8);
        // Without a catch-all, what matches nothing is denied at the end.
        let q = program(&[rule(true, 'c', Some(1), Some(3), "rwm")]);
        assert_eq!((q[q.len() - 2].code, q[q.len() - 2].imm), (ALU64_MOV_K, 0));
    }
}
