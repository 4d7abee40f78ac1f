//! A blocking CRI client over containerd's unix socket: the calls kubelet
//! makes to set up and take down a pod sandbox, through tonic's generic
//! gRPC client and the hand-written messages in `wire`.

use std::path::Path;
use std::time::Duration;

use tokio::runtime::Runtime;
use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};

use super::wire::{self, path};

#[derive(Debug)]
pub struct CriClient {
    rt: Runtime,
    channel: Channel,
}

impl CriClient {
    /// Connects to the runtime's socket (fails when nobody listens).
    pub fn connect(socket: &Path) -> Result<CriClient, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let uri = format!("unix://{}", socket.display());
        let ep = Endpoint::from_shared(uri.clone())
            .map_err(|e| format!("{uri}: {e}"))?
            .connect_timeout(Duration::from_secs(2))
            // RunPodSandbox runs the whole CNI chain: generous, but bounded.
            .timeout(Duration::from_secs(120));
        let channel = rt
            .block_on(ep.connect())
            .map_err(|e| format!("cannot connect to {uri}: {e}"))?;
        Ok(CriClient { rt, channel })
    }

    fn call<Req, Resp>(&self, method: &'static str, msg: Req) -> Result<Resp, Status>
    where
        Req: prost::Message + 'static,
        Resp: prost::Message + Default + 'static,
    {
        let mut grpc = tonic::client::Grpc::new(self.channel.clone());
        self.rt.block_on(async move {
            grpc.ready()
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
            let codec = tonic_prost::ProstCodec::<Req, Resp>::default();
            grpc.unary(Request::new(msg), PathAndQuery::from_static(method), codec)
                .await
                .map(tonic::Response::into_inner)
        })
    }

    pub fn version(&self) -> Result<wire::VersionResponse, Status> {
        let req = wire::VersionRequest {
            version: "v1".into(),
        };
        self.call(path::VERSION, req)
    }

    /// The runtime's conditions as (type, status, reason/message).
    pub fn conditions(&self) -> Result<Vec<wire::RuntimeCondition>, Status> {
        let resp: wire::StatusResponse =
            self.call(path::STATUS, wire::StatusRequest { verbose: false })?;
        Ok(resp.status.map(|s| s.conditions).unwrap_or_default())
    }

    /// RunPodSandbox; answers the sandbox ID.
    pub fn run_pod_sandbox(&self, config: wire::PodSandboxConfig) -> Result<String, Status> {
        let req = wire::RunPodSandboxRequest {
            config: Some(config),
            runtime_handler: String::new(),
        };
        let resp: wire::RunPodSandboxResponse = self.call(path::RUN_POD_SANDBOX, req)?;
        Ok(resp.pod_sandbox_id)
    }

    pub fn pod_sandbox_status(
        &self,
        id: &str,
        verbose: bool,
    ) -> Result<wire::PodSandboxStatusResponse, Status> {
        let req = wire::PodSandboxStatusRequest {
            pod_sandbox_id: id.into(),
            verbose,
        };
        self.call(path::POD_SANDBOX_STATUS, req)
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let req = wire::PodSandboxIdRequest {
            pod_sandbox_id: id.into(),
        };
        self.call::<_, wire::Empty>(path::STOP_POD_SANDBOX, req)
            .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<(), Status> {
        let req = wire::PodSandboxIdRequest {
            pod_sandbox_id: id.into(),
        };
        self.call::<_, wire::Empty>(path::REMOVE_POD_SANDBOX, req)
            .map(drop)
    }

    pub fn list_pod_sandboxes(&self) -> Result<Vec<wire::PodSandbox>, Status> {
        let resp: wire::ListPodSandboxResponse =
            self.call(path::LIST_POD_SANDBOX, wire::ListPodSandboxRequest {})?;
        Ok(resp.items)
    }
}
