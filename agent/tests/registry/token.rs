//! The bearer-token flow against the real registry configured for token
//! auth (`auth: token`, as Docker Hub and most cloud registries work): the
//! registry answers 401 with `WWW-Authenticate: Bearer realm=…,service=…,
//! scope=…`; the token server (the test's, on 127.0.0.1) checks the node's
//! basic credentials and issues a JWT signed RS256 with a key whose
//! certificate the registry trusts (`rootcertbundle`), which the registry
//! verifies for each request.

use std::path::Path;

use base64::Engine;

use crate::hostile::{ok, serve, Answer, Request};
use crate::support::fixture::*;
use crate::support::require;
use crate::{openssl, tools, Registry};

const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// `%3A` → `:`, `+` → ` ` (a query's value).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The token server's answer to `req`: a JWT granting the scopes asked
/// for, to `user` with `password` only.
fn token(req: &Request, dir: &Path, x5c: &str, user: &str, password: &str) -> Answer {
    let denied = |why: &str| {
        let body = format!(r#"{{"errors":[{{"code":"UNAUTHORIZED","message":"{why}"}}]}}"#);
        Answer {
            head: format!(
                "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ),
            body: body.into_bytes(),
            drip: false,
        }
    };
    let want = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    );
    if req.header("authorization") != Some(want.as_str()) {
        return denied("authentication required");
    }
    let query = req.path.split_once('?').map_or("", |(_, q)| q);
    let mut access = Vec::new();
    let mut service = String::new();
    for (k, v) in query.split('&').filter_map(|kv| kv.split_once('=')) {
        match k {
            "service" => service = unescape(v),
            "scope" => {
                let scope = unescape(v);
                let mut parts = scope.splitn(3, ':');
                if let (Some(kind), Some(name), Some(actions)) =
                    (parts.next(), parts.next(), parts.next())
                {
                    access.push(serde_json::json!({
                        "type": kind, "name": name,
                        "actions": actions.split(',').collect::<Vec<_>>(),
                    }));
                }
            }
            _ => {}
        }
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "x5c": [x5c]});
    let claims = serde_json::json!({
        "iss": "podagent-test-issuer", "sub": user, "aud": service,
        "exp": now + 300, "nbf": now - 10, "iat": now - 10,
        "jti": format!("{now}-{}", access.len()), "access": access,
    });
    let signing = format!(
        "{}.{}",
        B64URL.encode(header.to_string()),
        B64URL.encode(claims.to_string())
    );
    let sig = openssl(
        dir,
        &["dgst", "-sha256", "-sign", "token.key"],
        Some(signing.as_bytes()),
    );
    let jwt = format!("{signing}.{}", B64URL.encode(sig));
    ok(
        "application/json",
        serde_json::json!({"token": jwt, "access_token": jwt, "expires_in": 300})
            .to_string()
            .into_bytes(),
    )
}

#[test]
fn a_registry_behind_a_token_server_is_pulled_with_a_bearer_token() {
    if !require() || !tools() {
        return;
    }
    on_private_node(|| {
        let fx = fixture("registry-token");
        let pki = tempfile::tempdir().unwrap();
        openssl(
            pki.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "token.key",
                "-out",
                "token.crt",
                "-days",
                "1",
                "-subj",
                "/CN=podagent test token issuer",
            ],
            None,
        );
        let der = openssl(
            pki.path(),
            &["x509", "-in", "token.crt", "-outform", "DER"],
            None,
        );
        let x5c = base64::engine::general_purpose::STANDARD.encode(der);
        let pki_dir = pki.path().to_path_buf();
        serve(5103, move |req| {
            token(req, &pki_dir, &x5c, "edge", "t0ken-s3cret")
        });
        let dir = tempfile::tempdir().unwrap();
        let auth = format!(
            "auth: {{token: {{realm: 'http://127.0.0.1:5103/token', service: podagent-test-registry, issuer: podagent-test-issuer, rootcertbundle: {}}}}}\n",
            pki.path().join("token.crt").display()
        );
        let reg = Registry::start_in(dir, 5004, &auth, None);
        reg.push(
            &fx.dir.path().join("store/images"),
            "busybox:latest",
            "private/busybox:1",
            Some("edge:t0ken-s3cret"),
        );
        let root = fx.dir.path().join("pulled");
        let image = format!("{}/private/busybox:1", reg.addr);
        let auth_file = fx.dir.path().join("auth.json");
        // The token server refuses no credentials and wrong ones; with the
        // right ones it grants a token the registry verifies.
        crate::credentials_checked(
            &root,
            &image,
            &reg.addr,
            &auth_file,
            ("edge", "wrong-t0ken", "t0ken-s3cret"),
            &["token: 401", "authentication required"],
            &["token: 401"],
        );
        assert!(reg.gets("private/busybox/manifests/1") >= 1);
    });
}
