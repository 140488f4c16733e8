//! `podctl attach`: a container with `stdin: true` or `tty: true` has a
//! socket in its state dir (`attach.sock`, the node root's alone). What a
//! client writes goes to the container's stdin (its pipe, or the pty's
//! master); what the container writes goes to every client as well as to
//! its log. Raw bytes both ways, as `kubectl attach` streams them; a
//! client's end of input is not the container's (there is no stdinOnce).
//!
//! The shim never blocks on an attached client: input that does not fit in
//! the container's stdin, or output a client does not take, is dropped for
//! it.

use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

pub const SOCKET: &str = "attach.sock";

/// A short name for `dir/attach.sock` (a socket address holds 108 bytes;
/// a state dir may be longer): through a descriptor of the directory.
fn short(dir: &Path) -> std::io::Result<(OwnedFd, PathBuf)> {
    let fd = nix::fcntl::open(
        dir,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let path = PathBuf::from(format!("/proc/self/fd/{}/{SOCKET}", fd.as_raw_fd()));
    Ok((fd, path))
}

/// The shim's side: the listening socket and the clients attached.
#[derive(Debug)]
pub struct Attach {
    listener: UnixListener,
    /// The container's stdin: the write end of its pipe, or the pty's master.
    input: OwnedFd,
    clients: Vec<UnixStream>,
}

impl Attach {
    /// Listens at `state/attach.sock`, mode 0600.
    pub fn listen(state: &Path, input: OwnedFd) -> std::io::Result<Attach> {
        let (_dir, path) = short(state)?;
        let _ = std::fs::remove_file(&path);
        let old = nix::sys::stat::umask(Mode::from_bits_truncate(0o177));
        let listener = UnixListener::bind(&path);
        nix::sys::stat::umask(old);
        let listener = listener?;
        listener.set_nonblocking(true)?;
        let flags = nix::fcntl::fcntl(&input, nix::fcntl::FcntlArg::F_GETFL)?;
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&input, nix::fcntl::FcntlArg::F_SETFL(flags))?;
        Ok(Attach {
            listener,
            input,
            clients: Vec::new(),
        })
    }

    /// The descriptors to poll: the listener, then each client.
    pub fn fds(&self) -> Vec<std::os::fd::BorrowedFd<'_>> {
        std::iter::once(self.listener.as_fd())
            .chain(self.clients.iter().map(|c| c.as_fd()))
            .collect()
    }

    /// Handles what `ready` (in the order of `fds`) says is ready.
    pub fn serve(&mut self, ready: &[bool]) {
        if ready.first() == Some(&true) {
            while let Ok((c, _)) = self.listener.accept() {
                if c.set_nonblocking(true).is_ok() {
                    self.clients.push(c);
                }
            }
        }
        let mut buf = [0u8; 4096];
        let mut gone = Vec::new();
        for (i, c) in self.clients.iter_mut().enumerate() {
            if ready.get(i + 1) != Some(&true) {
                continue;
            }
            match c.read(&mut buf) {
                Ok(0) => gone.push(i),
                Ok(n) => {
                    // What the container's stdin cannot take now is dropped.
                    let _ = nix::unistd::write(&self.input, &buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => gone.push(i),
            }
        }
        for i in gone.into_iter().rev() {
            self.clients.remove(i);
        }
    }

    /// Copies the container's output to every client.
    pub fn output(&mut self, data: &[u8]) {
        self.clients.retain_mut(|c| match c.write(data) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        });
    }
}

/// podctl's side: connects to a container's attach socket.
pub fn connect(state: &Path) -> std::io::Result<UnixStream> {
    let (_dir, path) = short(state)?;
    UnixStream::connect(path)
}
