//! A real Kubernetes API server for the tests (the kube-apiserver build
//! `../shared/bin/kube-unpack` provides, on Debian's etcd), inside a test
//! namespace, stopped on drop: token authentication (an admin in
//! `system:masters`, and flannel's service account user, bound by
//! upstream's RBAC alone), kubeconfig files for both, and the few admin
//! calls the tests make (Nodes, Pods, RBAC), through kube-rs.
//!
//! Where the binaries are absent (a checkout outside this workspace),
//! [`KubeApi::binaries`] says so loudly and the tests that need them skip.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::TestNetns;
use crate::daemon::Daemon;
use crate::etcd::Etcd;

/// The admin's bearer token (group `system:masters`).
pub const ADMIN_TOKEN: &str = "admin-token-for-tests";
/// flannel's: the user name of the service account `kube-flannel/flannel`,
/// which upstream's ClusterRoleBinding names.
pub const FLANNEL_TOKEN: &str = "flannel-token-for-tests";
/// How long the API server may take to answer after it was started.
const UP_WITHIN: Duration = Duration::from_secs(60);

/// A kube-apiserver and its etcd in one namespace.
pub struct KubeApi {
    // Dropped first: the API server stops before its etcd.
    server: Option<Daemon>,
    etcd: Etcd,
    ns: TestNetns,
    bin: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    rt: tokio::runtime::Runtime,
    admin: Option<kube::Client>,
    /// `https://IP:6443`.
    pub url: String,
}

impl std::fmt::Debug for KubeApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeApi")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

/// The repository's root (where dist/ and scripts/ are).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// Whether a kubectl runs here; when not, says loudly that `skipped` (what
/// did not happen) and what to install.
pub fn kubectl_present(skipped: &str) -> bool {
    let found = std::process::Command::new("kubectl")
        .args(["version", "--client"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        eprintln!("SKIPPED: no kubectl (Debian: kubernetes-client): {skipped}");
    }
    found
}

fn sh(args: &[&str]) {
    let out = std::process::Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", args[0]));
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl KubeApi {
    /// Where the Kubernetes binaries are, unpacked; `None`, said loudly,
    /// where this checkout has no `../shared/bin/kube-unpack`.
    pub fn binaries() -> Option<PathBuf> {
        static DIR: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
        DIR.get_or_init(|| {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/bin/kube-unpack");
            if !script.is_file() {
                eprintln!(
                    "SKIPPED: no {} (the Kubernetes binaries this workspace provides): the kube tests did not run",
                    script.display()
                );
                return None;
            }
            let out = std::process::Command::new(&script)
                .output()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            assert!(
                out.status.success(),
                "{}: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        })
        .clone()
    }

    /// The API server in `ns` at `ip`:6443, its etcd on 127.0.0.1 there,
    /// its files under `dir`; returns once it answers. `None` when the
    /// binaries are absent (said by [`KubeApi::binaries`]).
    pub fn start(ns: &TestNetns, ip: &str, dir: &Path) -> Option<KubeApi> {
        Self::start_with(ns, ip, dir, &[])
    }

    /// As [`KubeApi::start`], with `extra` flags for the API server (e.g.
    /// an audit log).
    pub fn start_with(ns: &TestNetns, ip: &str, dir: &Path, extra: &[String]) -> Option<KubeApi> {
        let bin = Self::binaries()?.join("kube-apiserver");
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let key = dir.join("sa.key");
        let public = dir.join("sa.pub");
        sh(&["openssl", "genrsa", "-out", key.to_str().unwrap(), "2048"]);
        sh(&[
            "openssl",
            "rsa",
            "-in",
            key.to_str().unwrap(),
            "-pubout",
            "-out",
            public.to_str().unwrap(),
        ]);
        std::fs::write(
            dir.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},admin,uid-admin,\"system:masters\"\n{FLANNEL_TOKEN},system:serviceaccount:kube-flannel:flannel,uid-flannel\n"
            ),
        )
        .unwrap();
        let etcd = Etcd::start(ns, "http://127.0.0.1:2379", dir);
        let d = |p: &str| dir.join(p).display().to_string();
        let args: Vec<String> = [
            "--etcd-servers=http://127.0.0.1:2379".to_string(),
            format!("--bind-address={ip}"),
            format!("--advertise-address={ip}"),
            "--secure-port=6443".into(),
            format!("--cert-dir={}", d("certs")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--allow-privileged=true".into(),
            "--kubelet-preferred-address-types=InternalIP".into(),
        ]
        .into_iter()
        .chain(extra.iter().cloned())
        .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let mut api = KubeApi {
            server: None,
            etcd,
            ns: ns.handle(),
            bin,
            args,
            dir: dir.to_path_buf(),
            rt,
            admin: None,
            url: format!("https://{ip}:6443"),
        };
        api.start_again();
        Some(api)
    }

    /// Starts the API server (again, after [`KubeApi::stop`]) and waits
    /// until it answers.
    pub fn start_again(&mut self) {
        let log = self.dir.join("kube-apiserver.log");
        self.server = Some(Daemon::start(&self.bin, &self.args, &self.ns, &log));
        let ca = self.dir.join("certs/apiserver.crt");
        let end = Instant::now() + UP_WITHIN;
        while !ca.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(100));
        }
        let admin = self.kubeconfig("admin", ADMIN_TOKEN);
        // The certificate file may be half written at first: read afresh
        // at each try.
        let client = loop {
            let tried = self.block(async {
                let file =
                    kube::config::Kubeconfig::read_from(&admin).map_err(|e| e.to_string())?;
                let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
                    .await
                    .map_err(|e| e.to_string())?;
                let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
                let nodes: Api<Node> = Api::all(client.clone());
                match tokio::time::timeout(Duration::from_secs(5), nodes.list(&Default::default()))
                    .await
                {
                    Ok(Ok(_)) => Ok(client),
                    Ok(Err(e)) => Err(e.to_string()),
                    Err(_) => Err("no answer in 5 s".to_string()),
                }
            });
            match tried {
                Ok(c) => break c,
                Err(e) => assert!(
                    Instant::now() < end,
                    "kube-apiserver did not come up: {e}\n{}",
                    self.log()
                ),
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        self.admin = Some(client);
    }

    /// Stops the API server (etcd goes on).
    pub fn stop(&mut self) {
        self.admin = None;
        if let Some(mut d) = self.server.take() {
            d.stop();
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kube-apiserver.log")).unwrap_or_default()
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.join("certs/apiserver.crt")
    }

    /// A kubeconfig for `user` with `token`, written under the harness's
    /// directory; its path.
    pub fn kubeconfig(&self, user: &str, token: &str) -> PathBuf {
        let path = self.dir.join(format!("{user}.kubeconfig"));
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\ncurrent-context: test\n",
            self.url,
            self.ca().display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Runs `fut` to its end on a thread inside the API server's
    /// namespace (where its address is, and where sockets must be made).
    fn block<T: Send>(&self, fut: impl Future<Output = T> + Send) -> T {
        self.ns.run(|| self.rt.block_on(fut))
    }

    fn admin(&self) -> kube::Client {
        self.admin.clone().expect("the API server is stopped")
    }

    /// Upstream's objects for flannel: the Namespace, the ClusterRole with
    /// exactly its rules, the ServiceAccount and the binding.
    pub fn apply_flannel_rbac(&self) {
        let c = self.admin();
        self.block(async {
            let pp = PostParams::default();
            let ns: Namespace = serde_json::from_value(json!({
                "metadata": {"name": "kube-flannel"}
            }))
            .unwrap();
            Api::<Namespace>::all(c.clone()).create(&pp, &ns).await.unwrap();
            let role: ClusterRole = serde_json::from_value(json!({
                "metadata": {"name": "flannel"},
                "rules": [
                    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
                    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
                    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]}
                ]
            }))
            .unwrap();
            Api::<ClusterRole>::all(c.clone()).create(&pp, &role).await.unwrap();
            let sa: ServiceAccount = serde_json::from_value(json!({
                "metadata": {"name": "flannel", "namespace": "kube-flannel"}
            }))
            .unwrap();
            Api::<ServiceAccount>::namespaced(c.clone(), "kube-flannel")
                .create(&pp, &sa)
                .await
                .unwrap();
            let binding: ClusterRoleBinding = serde_json::from_value(json!({
                "metadata": {"name": "flannel"},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "flannel"},
                "subjects": [{"kind": "ServiceAccount", "name": "flannel", "namespace": "kube-flannel"}]
            }))
            .unwrap();
            Api::<ClusterRoleBinding>::all(c)
                .create(&pp, &binding)
                .await
                .unwrap();
        });
    }

    /// Makes Node `name` with pod CIDRs `cidrs` (none: not assigned yet)
    /// and `annotations`.
    pub fn create_node(&self, name: &str, cidrs: &[&str], annotations: &[(&str, &str)]) {
        let mut node = json!({
            "metadata": {"name": name},
            "spec": {}
        });
        if !annotations.is_empty() {
            let a: serde_json::Map<String, Value> = annotations
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
                .collect();
            node["metadata"]["annotations"] = Value::Object(a);
        }
        if let Some(first) = cidrs.first() {
            node["spec"] = json!({"podCIDR": first, "podCIDRs": cidrs});
        }
        let node: Node = serde_json::from_value(node).unwrap();
        let c = self.admin();
        self.block(Api::<Node>::all(c).create(&PostParams::default(), &node))
            .unwrap_or_else(|e| panic!("cannot create node {name}: {e}"));
    }

    /// Makes every Node of `nodes` (JSON objects), `parallel` requests in
    /// flight at a time: thousands in seconds, for the benchmarks.
    pub fn create_nodes(&self, nodes: Vec<Value>, parallel: usize) -> Result<(), String> {
        let c = self.admin();
        self.block(async move {
            let mut flying = tokio::task::JoinSet::new();
            for n in nodes {
                if flying.len() >= parallel.max(1)
                    && let Some(done) = flying.join_next().await
                {
                    done.map_err(|e| e.to_string())??;
                }
                let node: Node = serde_json::from_value(n).map_err(|e| e.to_string())?;
                let api = Api::<Node>::all(c.clone());
                flying.spawn(async move {
                    api.create(&PostParams::default(), &node)
                        .await
                        .map(drop)
                        .map_err(|e| format!("cannot create a node: {e}"))
                });
            }
            while let Some(done) = flying.join_next().await {
                done.map_err(|e| e.to_string())??;
            }
            Ok(())
        })
    }

    /// Node `name` as JSON.
    pub fn node(&self, name: &str) -> Value {
        let c = self.admin();
        let n = self
            .block(Api::<Node>::all(c).get(name))
            .unwrap_or_else(|e| panic!("cannot read node {name}: {e}"));
        serde_json::to_value(n).unwrap()
    }

    /// A strategic merge patch of Node `name` (`status`: of its status).
    pub fn patch_node(&self, name: &str, patch: Value, status: bool) {
        let c = self.admin();
        let api = Api::<Node>::all(c);
        let pp = PatchParams::default();
        let done = self.block(async {
            if status {
                api.patch_status(name, &pp, &Patch::Strategic(patch)).await
            } else {
                api.patch(name, &pp, &Patch::Strategic(patch)).await
            }
        });
        done.unwrap_or_else(|e| panic!("cannot patch node {name}: {e}"));
    }

    pub fn delete_node(&self, name: &str) {
        let c = self.admin();
        self.block(Api::<Node>::all(c).delete(name, &DeleteParams::default()))
            .unwrap_or_else(|e| panic!("cannot delete node {name}: {e}"));
    }

    /// A Pod `ns/name` placed on `node` (nothing runs it: its spec is what
    /// an agent reads to learn its node).
    pub fn create_pod(&self, ns: &str, name: &str, node: &str) {
        let c = self.admin();
        self.block(async {
            let sa: ServiceAccount =
                serde_json::from_value(json!({"metadata": {"name": "default", "namespace": ns}}))
                    .unwrap();
            let _ = Api::<ServiceAccount>::namespaced(c.clone(), ns)
                .create(&PostParams::default(), &sa)
                .await;
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": name, "namespace": ns},
                "spec": {
                    "nodeName": node,
                    "automountServiceAccountToken": false,
                    "containers": [{"name": "c", "image": "none"}]
                }
            }))
            .unwrap();
            Api::<Pod>::namespaced(c, ns)
                .create(&PostParams::default(), &pod)
                .await
                .unwrap_or_else(|e| panic!("cannot create pod {ns}/{name}: {e}"));
        });
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }
}
