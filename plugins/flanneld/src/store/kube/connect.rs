//! Reaching the API server as upstream does: a kubeconfig file
//! (`--kubeconfig-file`; server, CA or insecure-skip-tls-verify, token or
//! token file, client certificate and key), its server replaced by
//! `--kube-api-url` when given; with neither, the pod's in-cluster config
//! (`KUBERNETES_SERVICE_HOST`/`PORT` and the service account's token and
//! CA, the token re-read as it rotates); with a URL alone, that URL. And
//! this node's name: `NODE_NAME`, else the `spec.nodeName` of the pod
//! `POD_NAMESPACE`/`POD_NAME`.

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};

use super::{kube_err, within};
use crate::flags::Options;
use crate::store::StoreError;

/// A kube error as a person reads it: the server's message when it sent
/// one (with its HTTP code), else the transport's chain of causes.
pub fn describe(e: &kube::Error) -> String {
    use std::error::Error as _;
    if let kube::Error::Api(s) = e {
        return format!("{} ({} {})", s.message, s.code, s.reason);
    }
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

fn url(text: &str) -> Result<http::Uri, StoreError> {
    text.parse()
        .map_err(|e| StoreError::Invalid(format!("--kube-api-url {text:?}: {e}")))
}

/// The client config the flags ask for.
pub async fn config(opts: &Options) -> Result<kube::Config, StoreError> {
    match (&opts.kubeconfig_file, &opts.kube_api_url) {
        (Some(path), server) => {
            let file = Kubeconfig::read_from(path).map_err(|e| {
                StoreError::Invalid(format!(
                    "cannot read the kubeconfig {} (--kubeconfig-file): {e}",
                    path.display()
                ))
            })?;
            let mut c = kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default())
                .await
                .map_err(|e| {
                    StoreError::Invalid(format!(
                        "the kubeconfig {} (--kubeconfig-file) cannot be used: {e}",
                        path.display()
                    ))
                })?;
            if let Some(server) = server {
                c.cluster_url = url(server)?;
            }
            Ok(c)
        }
        (None, None) => kube::Config::incluster().map_err(|e| {
            StoreError::Invalid(format!(
                "no --kubeconfig-file or --kube-api-url, and not in a pod: {e}"
            ))
        }),
        // A URL alone: the pod's credentials for it if in one, else none.
        (None, Some(server)) => match kube::Config::incluster() {
            Ok(mut c) => {
                c.cluster_url = url(server)?;
                Ok(c)
            }
            Err(_) => Ok(kube::Config::new(url(server)?)),
        },
    }
}

fn env(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.is_empty())
}

/// Whether the environment says which Node this is.
pub fn check_node_env() -> Result<(), StoreError> {
    if env("NODE_NAME").is_some() || (env("POD_NAME").is_some() && env("POD_NAMESPACE").is_some()) {
        return Ok(());
    }
    Err(StoreError::Invalid(
        "kube subnet manager: set NODE_NAME, or POD_NAME and POD_NAMESPACE (the DaemonSet's downward API does), to say which Node this is".into(),
    ))
}

/// This node's name: `NODE_NAME`, else the node of the pod
/// `POD_NAMESPACE`/`POD_NAME` (which upstream's RBAC lets it read).
pub async fn node_name(client: &kube::Client) -> Result<String, StoreError> {
    if let Some(name) = env("NODE_NAME") {
        return Ok(name);
    }
    check_node_env()?;
    let (Some(pod), Some(ns)) = (env("POD_NAME"), env("POD_NAMESPACE")) else {
        return Err(StoreError::Invalid(
            "POD_NAME and POD_NAMESPACE went away".into(),
        ));
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let what = format!("cannot read pod {ns}/{pod} to learn its node");
    let p = within(&what, pods.get(&pod)).await?;
    p.spec
        .and_then(|s| s.node_name)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| kube_err(&what, "its spec names no node yet"))
}
