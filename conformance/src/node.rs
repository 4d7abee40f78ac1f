//! One simulated node for a plugin's behaviour tests: a host namespace
//! with pod namespaces and a scratch data directory; every call is made as
//! a runtime makes it (container `ctr<N>` in pod N, inside the host).

use serde_json::Value;

use crate::runner::{Invocation, PluginOutput};
use crate::{TempDir, TestHost, plugin_binary};

#[derive(Debug)]
pub struct PluginNode {
    pub host: TestHost,
    pub data: TempDir,
    plugin: &'static str,
}

impl PluginNode {
    pub fn new(plugin: &'static str, pods: usize, tag: &str) -> PluginNode {
        PluginNode {
            host: TestHost::new(pods),
            data: TempDir::new(tag),
            plugin,
        }
    }

    pub fn call(&self, command: &str, pod: usize, conf: &Value) -> Invocation {
        Invocation::new(command)
            .container_id(&format!("ctr{pod}"))
            .netns(self.host.pod(pod))
            .config(conf)
    }

    pub fn run(&self, inv: Invocation) -> PluginOutput {
        inv.run(&plugin_binary(self.plugin), &self.host.host)
    }

    pub fn add(&self, pod: usize, conf: &Value) -> Value {
        self.run(self.call("ADD", pod, conf)).success()
    }

    pub fn del(&self, pod: usize, conf: &Value) {
        self.run(self.call("DEL", pod, conf)).silent_success();
    }

    /// CHECK with `result` as prevResult.
    pub fn check(&self, pod: usize, conf: &Value, result: &Value) -> PluginOutput {
        self.run(self.call("CHECK", pod, &crate::util::with_prev(conf, result)))
    }
}

/// Declares `struct $name(PluginNode)`, dereferencing to the shared node,
/// for a test file to hang its own helpers on.
#[macro_export]
macro_rules! plugin_node_wrapper {
    ($name:ident) => {
        /// The shared node, plus this file's own helpers.
        struct $name($crate::PluginNode);

        impl std::ops::Deref for $name {
            type Target = $crate::PluginNode;
            fn deref(&self) -> &$crate::PluginNode {
                &self.0
            }
        }
    };
}
