//! dist/kube-flannel.yml applied with kubectl to a real kube-apiserver (in
//! a test namespace, no nodes): accepted with strict field validation and
//! without a pod-security warning, and its RBAC gives flannel's service
//! account exactly upstream's rights. Running it on nodes is the cluster
//! test's part. Skipped, loudly, without the Kubernetes binaries or kubectl.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test code: a failed step fails the test

use std::path::PathBuf;
use std::process::Output;

use conformance::kube::{ADMIN_TOKEN, KubeApi, kubectl_present, repo};
use conformance::{TempDir, TestNetns};
use serde_json::Value;

const FLANNEL_USER: &str = "system:serviceaccount:kube-flannel:flannel";

struct Kubectl<'a> {
    ns: &'a TestNetns,
    kubeconfig: PathBuf,
    cache: PathBuf,
}

impl Kubectl<'_> {
    fn run(&self, args: &[&str]) -> Output {
        let mut all = vec![
            "--kubeconfig",
            self.kubeconfig.to_str().unwrap(),
            "--cache-dir",
            self.cache.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        self.ns.exec("kubectl", &all)
    }

    fn ok(&self, args: &[&str]) -> (String, String) {
        let out = self.run(args);
        let (o, e) = (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        );
        assert!(out.status.success(), "kubectl {args:?}: {o}{e}");
        (o, e)
    }

    /// Whether flannel's service account, as a pod's token presents it
    /// (the user and its groups), may `verb` `resource` (`sub`): a
    /// SubjectAccessReview the admin asks.
    fn can(&self, verb: &str, resource: &str, sub: Option<&str>) -> bool {
        let mut attrs = serde_json::json!({"verb": verb, "resource": resource, "group": ""});
        if let Some(s) = sub {
            attrs["subresource"] = Value::from(s);
        }
        if resource == "pods" {
            attrs["namespace"] = Value::from("kube-flannel");
        }
        let review = serde_json::json!({
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": FLANNEL_USER,
                "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-flannel", "system:authenticated"],
                "resourceAttributes": attrs
            }
        });
        let file = self.cache.with_file_name("review.json");
        std::fs::write(&file, review.to_string()).unwrap();
        let (out, _) = self.ok(&["create", "-f", file.to_str().unwrap(), "-o", "json"]);
        let answer: Value = serde_json::from_str(&out).unwrap();
        answer["status"]["allowed"] == true
    }
}

#[test]
fn the_manifest_applies_to_a_real_api_server() {
    if KubeApi::binaries().is_none() || !kubectl_present("dist/kube-flannel.yml was not applied") {
        return;
    }
    let ns = TestNetns::new("kfyml");
    let dir = TempDir::new("kfyml");
    let Some(api) = KubeApi::start(&ns, "127.0.0.1", &dir.path().join("kube")) else {
        return;
    };
    let k = Kubectl {
        ns: &ns,
        kubeconfig: api.kubeconfig("admin", ADMIN_TOKEN),
        cache: dir.path().join("kubectl-cache"),
    };
    let manifest = repo().join("dist/kube-flannel.yml");
    let manifest = manifest.to_str().unwrap();
    // kubectl before 1.25 (Debian's kubernetes-client is 1.20) knows no
    // "strict": its --validate=true refuses unknown fields on the client.
    let strict = k.run(&[
        "apply",
        "--validate=strict",
        "--dry-run=client",
        "-f",
        manifest,
    ]);
    let validate =
        if String::from_utf8_lossy(&strict.stderr).contains("invalid argument \"strict\"") {
            "--validate=true"
        } else {
            "--validate=strict"
        };
    let (out, err) = k.ok(&["apply", validate, "-f", manifest]);
    assert!(
        !err.to_lowercase().contains("warning"),
        "warnings (pod security? deprecated fields?): {err}"
    );
    for object in [
        "namespace/kube-flannel",
        "clusterrole.rbac.authorization.k8s.io/flannel",
        "clusterrolebinding.rbac.authorization.k8s.io/flannel",
        "serviceaccount/flannel",
        "configmap/kube-flannel-cfg",
        "daemonset.apps/kube-flannel-ds",
    ] {
        assert!(
            out.contains(&format!("{object} created")),
            "{object}: {out}"
        );
    }

    // Exactly upstream's rights.
    for (verb, what, sub) in [
        ("get", "pods", None),
        ("get", "nodes", None),
        ("list", "nodes", None),
        ("watch", "nodes", None),
        ("patch", "nodes", Some("status")),
    ] {
        assert!(
            k.can(verb, what, sub),
            "flannel cannot {verb} {what} {sub:?}"
        );
    }
    for (verb, what, sub) in [
        ("list", "pods", None),
        ("patch", "nodes", None),
        ("update", "nodes", Some("status")),
        ("delete", "nodes", None),
        ("get", "secrets", None),
        ("get", "configmaps", None),
    ] {
        assert!(!k.can(verb, what, sub), "flannel may {verb} {what} {sub:?}");
    }

    // The DaemonSet as the server keeps it.
    let (json, _) = k.ok(&[
        "-n",
        "kube-flannel",
        "get",
        "ds",
        "kube-flannel-ds",
        "-o",
        "json",
    ]);
    let ds: Value = serde_json::from_str(&json).unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["serviceAccountName"], "flannel");
    assert_eq!(
        pod["tolerations"],
        serde_json::json!([{"operator": "Exists", "effect": "NoSchedule"}])
    );
    let inits: Vec<&str> = pod["initContainers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(inits, ["install-cni-plugin", "install-cni"]);
    let agent = &pod["containers"][0];
    assert_eq!(agent["securityContext"]["privileged"], false);
    assert_eq!(
        agent["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN", "NET_RAW"])
    );
    assert_eq!(agent["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(agent["readinessProbe"]["httpGet"]["path"], "/readyz");
    let env: Vec<&str> = agent["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect();
    assert_eq!(env, ["NODE_NAME", "POD_NAME", "POD_NAMESPACE"]);
    let paths: Vec<&str> = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["hostPath"]["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "/run/flannel",
            "/opt/cni/bin",
            "/etc/cni/net.d",
            "/run/xtables.lock",
            "/dev/net/tun"
        ]
    );

    // A pod of it passes admission (the namespace's pod-security level,
    // the priority class, the service account, pod validation), as the
    // DaemonSet controller would create it: a server-side dry run.
    let pod_json = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kube-flannel-ds-check", "namespace": "kube-flannel",
                     "labels": ds["spec"]["template"]["metadata"]["labels"]},
        "spec": pod
    });
    let file = dir.path().join("pod.json");
    std::fs::write(&file, pod_json.to_string()).unwrap();
    let (_, err) = k.ok(&["create", "--dry-run=server", "-f", file.to_str().unwrap()]);
    assert!(!err.to_lowercase().contains("warning"), "{err}");
    drop(api);
}
