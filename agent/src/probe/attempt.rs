//! One probe attempt: `tcpSocket`, `httpGet` and `grpc` from a thread that
//! entered the container's network namespace (no curl or nc needed in the
//! image), `exec` through `podagent exec`. Each blocks for at most its
//! timeout; the agent runs it on a thread of its own.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use specs::plan::ProbeAction;

/// Why an attempt failed: the `Unhealthy` event's message, worded as the
/// kubelet's.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the pod is gone")]
    PodGone,
    #[error("the container is not running")]
    NotRunning,
    #[error("the container's network namespace")]
    NetNs(#[source] std::io::Error),
    #[error("host {0:?} is not an IP address")]
    BadHost(String),
    #[error("entering the pod's network namespace")]
    EnterNetNs(#[source] nix::Error),
    #[error("dial tcp {to}")]
    Dial {
        to: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the probe's thread panicked")]
    Thread,
    #[error("the probe's {what}")]
    Local {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("Get http://{to}{path}: timed out after {timeout:?}")]
    HttpTimeout {
        to: SocketAddr,
        path: String,
        timeout: Duration,
    },
    #[error("Get http://{to}{path}")]
    Http {
        to: SocketAddr,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("the request")]
    Request(#[source] hyper::http::Error),
    #[error("HTTP probe failed with statuscode: {0}")]
    Status(u16),
    #[error("timeout: health rpc did not complete within {0:?}")]
    RpcTimeout(Duration),
    #[error("failed to connect service {to}")]
    RpcConnect {
        to: SocketAddr,
        #[source]
        source: hyper::Error,
    },
    #[error("health rpc failed")]
    Rpc(#[source] hyper::Error),
    #[error("health rpc failed: HTTP {0}")]
    RpcHttp(hyper::StatusCode),
    #[error("health rpc failed: grpc-status {code:?} {message}")]
    GrpcStatus { code: String, message: String },
    #[error("health rpc failed: the response is not a HealthCheckResponse")]
    BadResponse,
    #[error("service unhealthy (responded with \"{0}\")")]
    Unhealthy(&'static str),
    #[error("running the exec probe")]
    Spawn(#[source] std::io::Error),
    #[error("the exec probe's pidfd")]
    Pidfd(#[source] nix::Error),
    #[error("command timed out after {0:?}")]
    ExecTimeout(Duration),
    #[error("command exited with {code}: {output}")]
    Exit { code: i32, output: String },
    #[error("command was killed by a signal")]
    Killed,
}

/// Where one attempt is made.
#[derive(Debug)]
pub struct Target {
    /// The container's network namespace (`/proc/<pid>/ns/net`, opened once
    /// the pid was checked by its start time).
    pub net_ns: OwnedFd,
    /// The pod's IP (what the kubelet connects to); loopback when it has
    /// none.
    pub pod_ip: Option<IpAddr>,
    /// For `exec`: `podagent exec` and its arguments up to the command.
    pub exec: Command,
}

/// Makes one attempt; `Err` says why it failed (the event's message).
pub fn attempt(action: &ProbeAction, target: Target, timeout: Duration) -> Result<(), ProbeError> {
    let timeout = timeout.max(Duration::from_secs(1));
    let addr = |host: &Option<String>, port: u16| -> Result<SocketAddr, ProbeError> {
        let ip = match host {
            Some(h) => h
                .parse::<IpAddr>()
                .map_err(|_| ProbeError::BadHost(h.clone()))?,
            None => target.pod_ip.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)),
        };
        Ok(SocketAddr::new(ip, port))
    };
    match action {
        ProbeAction::TcpSocket { port, host } => {
            let to = addr(host, *port)?;
            connect_in(&target.net_ns, to, timeout).map(drop)
        }
        ProbeAction::HttpGet {
            path,
            port,
            host,
            headers,
            ..
        } => {
            let to = addr(host, *port)?;
            let stream = connect_in(&target.net_ns, to, timeout)?;
            http_get(stream, to, path, headers, timeout)
        }
        ProbeAction::Exec { command } => exec(target.exec, command, timeout),
        ProbeAction::Grpc { port, service } => {
            let to = addr(&None, *port)?;
            let stream = connect_in(&target.net_ns, to, timeout)?;
            grpc_health(stream, to, service.as_deref().unwrap_or(""), timeout)
        }
    }
}

/// Runs `f` over `stream` (made async) on a current-thread runtime of its
/// own, for at most `timeout`; `late` is the error when it takes longer.
fn exchange<T, F, Fut>(
    stream: std::net::TcpStream,
    timeout: Duration,
    late: ProbeError,
    f: F,
) -> Result<T, ProbeError>
where
    F: FnOnce(tokio::net::TcpStream) -> Fut,
    Fut: std::future::Future<Output = Result<T, ProbeError>>,
{
    let local = |what| move |source| ProbeError::Local { what, source };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(local("runtime"))?;
    rt.block_on(async {
        let go = async {
            stream.set_nonblocking(true).map_err(local("socket"))?;
            let stream = tokio::net::TcpStream::from_std(stream).map_err(local("socket"))?;
            f(stream).await
        };
        tokio::time::timeout(timeout, go).await.map_err(|_| late)?
    })
}

/// `grpc.health.v1.Health/Check` over HTTP/2 without TLS, as the kubelet
/// makes it: success is `SERVING`. The request and response messages are a
/// string and an enum, encoded here rather than through a protobuf crate.
fn grpc_health(
    stream: std::net::TcpStream,
    to: SocketAddr,
    service: &str,
    timeout: Duration,
) -> Result<(), ProbeError> {
    use http_body_util::BodyExt;
    let late = ProbeError::RpcTimeout(timeout);
    let (data, trailers) = exchange(stream, timeout, late, |stream| async move {
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .map_err(|source| ProbeError::RpcConnect { to, source })?;
        tokio::spawn(conn);
        let req = hyper::Request::post(format!("http://{to}/grpc.health.v1.Health/Check"))
            .header(hyper::header::CONTENT_TYPE, "application/grpc")
            .header(hyper::header::TE, "trailers")
            .header(hyper::header::USER_AGENT, "kube-probe/podagent")
            .body(http_body_util::Full::new(bytes::Bytes::from(grpc_frame(
                &health_request(service),
            ))))
            .map_err(ProbeError::Request)?;
        let resp = send.send_request(req).await.map_err(ProbeError::Rpc)?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(ProbeError::RpcHttp(resp.status()));
        }
        // A trailers-only answer carries grpc-status in its headers.
        let head = resp.headers().clone();
        let body = resp.into_body().collect().await.map_err(ProbeError::Rpc)?;
        let trailers = body.trailers().cloned().unwrap_or(head);
        Ok((body.to_bytes(), trailers))
    })?;
    let code = trailers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if code != "0" {
        let message = trailers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        return Err(ProbeError::GrpcStatus {
            code: code.to_string(),
            message: message.to_string(),
        });
    }
    let status = data
        .get(5..)
        .filter(|_| data.len() >= 5 && data[0] == 0)
        .and_then(health_status)
        .ok_or(ProbeError::BadResponse)?;
    match status {
        1 => Ok(()),
        s => Err(ProbeError::Unhealthy(match s {
            0 => "UNKNOWN",
            2 => "NOT_SERVING",
            3 => "SERVICE_UNKNOWN",
            _ => "?",
        })),
    }
}

/// A gRPC message on the wire: uncompressed flag, big-endian length, bytes.
fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + msg.len());
    out.push(0);
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    out
}

fn put_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn get_varint(b: &[u8], at: &mut usize) -> Option<u64> {
    let mut n = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*at)?;
        *at += 1;
        n |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(n);
        }
    }
    None
}

/// `HealthCheckRequest { string service = 1; }` (empty: the whole server).
fn health_request(service: &str) -> Vec<u8> {
    let mut out = Vec::new();
    if !service.is_empty() {
        out.push(0x0a);
        put_varint(&mut out, service.len() as u64);
        out.extend_from_slice(service.as_bytes());
    }
    out
}

/// `HealthCheckResponse { ServingStatus status = 1; }`: the status (0 when
/// absent, as proto3 reads it); other fields skipped; None when malformed.
fn health_status(msg: &[u8]) -> Option<u64> {
    let (mut at, mut status) = (0, 0);
    while at < msg.len() {
        let key = get_varint(msg, &mut at)?;
        match (key >> 3, key & 7) {
            (1, 0) => status = get_varint(msg, &mut at)?,
            (_, 0) => {
                get_varint(msg, &mut at)?;
            }
            (_, 1) => at += 8,
            (_, 2) => {
                let len = usize::try_from(get_varint(msg, &mut at)?).ok()?;
                at = at.checked_add(len)?;
            }
            (_, 5) => at += 4,
            _ => return None,
        }
    }
    (at == msg.len()).then_some(status)
}

/// Connects from inside the namespace: a thread enters it, connects and
/// exits; the socket keeps its namespace.
fn connect_in(
    net_ns: &OwnedFd,
    to: SocketAddr,
    timeout: Duration,
) -> Result<std::net::TcpStream, ProbeError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(net_ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(ProbeError::EnterNetNs)?;
            std::net::TcpStream::connect_timeout(&to, timeout)
                .map_err(|source| ProbeError::Dial { to, source })
        })
        .join()
        .unwrap_or(Err(ProbeError::Thread))
    })
}

fn http_get(
    stream: std::net::TcpStream,
    to: SocketAddr,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> Result<(), ProbeError> {
    use http_body_util::BodyExt;
    let late = ProbeError::HttpTimeout {
        to,
        path: path.to_string(),
        timeout,
    };
    let failed = |source| ProbeError::Http {
        to,
        path: path.to_string(),
        source,
    };
    let code = exchange(stream, timeout, late, |stream| async move {
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .map_err(failed)?;
        tokio::spawn(conn);
        let mut req = hyper::Request::get(path)
            .header(hyper::header::HOST, to.to_string())
            .header(hyper::header::USER_AGENT, "kube-probe/podagent")
            .header(hyper::header::ACCEPT, "*/*");
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .map_err(ProbeError::Request)?;
        let resp = send.send_request(req).await.map_err(failed)?;
        let code = resp.status().as_u16();
        // The body is read (bounded by the timeout) and dropped.
        let _ = resp.into_body().collect().await;
        Ok(code)
    })?;
    if (200..400).contains(&code) {
        Ok(())
    } else {
        Err(ProbeError::Status(code))
    }
}

/// Runs the command in the container; success is exit code 0. Killed at the
/// timeout.
fn exec(mut cmd: Command, command: &[String], timeout: Duration) -> Result<(), ProbeError> {
    let mut child = cmd
        .arg("--")
        .args(command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(ProbeError::Spawn)?;
    let pidfd = crate::sys::pidfd_open(child.id() as i32).map_err(ProbeError::Pidfd)?;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ProbeError::ExecTimeout(timeout));
        }
        let mut fds = [PollFd::new(pidfd.as_fd(), PollFlags::POLLIN)];
        let ms = u16::try_from(left.as_millis()).unwrap_or(u16::MAX);
        match poll(&mut fds, PollTimeout::from(ms.max(1))) {
            Ok(n) if n > 0 => break,
            _ => continue,
        }
    }
    let mut out = String::new();
    if let Some(o) = child.stdout.take() {
        let _ = o.take(512).read_to_string(&mut out);
    }
    let status = child.wait().map_err(ProbeError::Spawn)?;
    match status.code() {
        Some(0) => Ok(()),
        Some(code) => Err(ProbeError::Exit {
            code,
            output: out.trim().to_string(),
        }),
        None => Err(ProbeError::Killed),
    }
}

/// `podagent exec` for a container, up to its command.
pub fn exec_command(
    podagent: &PathBuf,
    container_dir: &std::path::Path,
    pid: i32,
    ticks: u64,
    seccomp_cache: &std::path::Path,
) -> Command {
    let mut cmd = Command::new(podagent);
    cmd.arg("exec")
        .arg("--bundle")
        .arg(container_dir.join("bundle"))
        .arg("--pid")
        .arg(pid.to_string())
        .arg("--start-ticks")
        .arg(ticks.to_string())
        .arg("--seccomp-cache")
        .arg(seccomp_cache);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_health_messages_are_encoded_and_decoded_by_hand() {
        assert_eq!(health_request(""), b"");
        assert_eq!(health_request("db"), b"\x0a\x02db");
        let long = "s".repeat(200);
        assert_eq!(&health_request(&long)[..3], b"\x0a\xc8\x01");
        assert_eq!(grpc_frame(b"ab"), b"\0\0\0\0\x02ab");
        assert_eq!(health_status(b"\x08\x01"), Some(1));
        assert_eq!(health_status(b""), Some(0), "proto3: absent is UNKNOWN");
        // Unknown fields of every wire type are skipped.
        assert_eq!(
            health_status(b"\x12\x03abc\x18\x96\x01\x21\0\0\0\0\0\0\0\0\x2d\0\0\0\0\x08\x02"),
            Some(2)
        );
        assert_eq!(health_status(b"\x08"), None, "cut short");
        assert_eq!(health_status(b"\x12\x05ab"), None, "length past the end");
        assert_eq!(health_status(b"\x0b"), None, "group wire type");
    }
}
