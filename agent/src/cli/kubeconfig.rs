//! `podctl kubeconfig [--server URL] [--name NAME]`: a kubeconfig for the
//! node's Kubernetes API (`podagent run --kube-api-address`), with its CA
//! pinned and its token, printed for the user to keep (`> ~/.kube/config`,
//! mode 0600: it is a credential). Asked of the agent over its socket,
//! which only root (or `--api-group`) may use.

use std::io::Write;

use super::{Api, Outcome};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The server URL to write (default: the agent's listening address);
    /// another name or address must be one its certificate names
    /// (`kube-api/tls.names` under the root dir).
    #[arg(long)]
    pub server: Option<String>,
    /// The cluster, user and context name.
    #[arg(long, default_value = "podagent")]
    pub name: String,
    #[command(flatten)]
    pub api: Api,
}

pub fn run(args: &Args, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
    let v = match args.api.get_json("/v1/kubeconfig") {
        Ok(v) => v,
        Err(e) => {
            let _ = writeln!(err, "podctl kubeconfig: {e}");
            return Outcome::Invalid;
        }
    };
    let field = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let server = args.server.clone().unwrap_or_else(|| field("server"));
    let text = crate::kube::access::kubeconfig(
        &args.name,
        &server,
        &field("certificateAuthority"),
        &field("token"),
    );
    let _ = write!(out, "{text}");
    Outcome::Ok
}
