//! Probe attempts against real servers: a gRPC health service over HTTP/2
//! cleartext, in a network namespace of the test's own.

use std::process::Command;
use std::time::{Duration, Instant};

mod support;

use support::fixture::*;
use support::require;

/// A gRPC health server over HTTP/2 cleartext, standing in for a container's
/// app: "" is SERVING, "down" NOT_SERVING, "gone" answers grpc-status 5,
/// "slow" answers after 2 s. It serves `connections` connections, then
/// returns.
fn grpc_health_server(listener: std::net::TcpListener, connections: usize) {
    use http_body_util::BodyExt;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .unwrap();
    rt.block_on(async move {
        listener.set_nonblocking(true).unwrap();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let mut served = Vec::new();
        for _ in 0..connections {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    assert_eq!(req.uri().path(), "/grpc.health.v1.Health/Check");
                    assert_eq!(req.headers()["content-type"], "application/grpc");
                    let body = req.into_body().collect().await.unwrap().to_bytes();
                    // Frame header, then field 1 (the service) if not empty.
                    let service =
                        String::from_utf8_lossy(body.get(7..).unwrap_or_default()).into_owned();
                    let (status, code) = match service.as_str() {
                        "" => (1u8, "0"),
                        "down" => (2, "0"),
                        "gone" => (0, "5"),
                        _ => {
                            tokio::time::sleep(Duration::from_secs(2)).await;
                            (1, "0")
                        }
                    };
                    let mut trailers = hyper::HeaderMap::new();
                    trailers.insert("grpc-status", code.parse().unwrap());
                    let frames = vec![
                        Ok::<_, std::convert::Infallible>(hyper::body::Frame::data(
                            bytes::Bytes::from(vec![0, 0, 0, 0, 2, 0x08, status]),
                        )),
                        Ok(hyper::body::Frame::trailers(trailers)),
                    ];
                    let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(body))
                },
            );
            served.push(tokio::spawn(async move {
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
            }));
        }
        for s in served {
            let _ = s.await;
        }
    });
}

/// gRPC probes: the health service's answer, its errors and the timeout,
/// made from inside the network namespace as for a pod.
#[test]
fn a_grpc_probe_reads_the_health_service() {
    if !require() {
        return;
    }
    on_private_node(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || grpc_health_server(listener, 4));
        let probe = |service: &str, port: u16| {
            let target = agent::probe::Target {
                net_ns: std::fs::File::open("/proc/thread-self/ns/net")
                    .unwrap()
                    .into(),
                pod_ip: Some(std::net::Ipv4Addr::LOCALHOST.into()),
                exec: Command::new("true"),
            };
            let action = specs::plan::ProbeAction::Grpc {
                port,
                service: (!service.is_empty()).then(|| service.to_string()),
            };
            agent::probe::attempt(&action, target, Duration::from_secs(1))
                .map_err(|e| agent::error_chain(&e))
        };
        assert_eq!(probe("", port), Ok(()));
        assert_eq!(
            probe("down", port),
            Err("service unhealthy (responded with \"NOT_SERVING\")".to_string())
        );
        let e = probe("gone", port).unwrap_err();
        assert!(e.contains("grpc-status \"5\""), "{e}");
        let t = Instant::now();
        let e = probe("slow", port).unwrap_err();
        assert!(
            e.starts_with("timeout: health rpc did not complete within 1s"),
            "{e}"
        );
        assert!(
            t.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t.elapsed()
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let e = probe("", closed_port).unwrap_err();
        assert!(e.contains("Connection refused"), "{e}");
        server.join().unwrap();
    });
}
