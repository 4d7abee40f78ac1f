//! The CNI specification, 0.1.0 to 1.1.0, as Rust.
//!
//! - `config`: plugin configs and config lists, unknown fields kept;
//! - `result`: results of every version and the conversions between them;
//! - `error`: the spec's error object and codes;
//! - `args`: `CNI_ARGS`;
//! - `skel`: the entry point that turns env + stdin into a verb;
//! - `delegate`: running another plugin from `CNI_PATH`.

pub mod args;
pub mod config;
pub mod delegate;
pub mod error;
pub mod result;
pub mod skel;
pub mod validate;
pub mod version;

pub use args::CniArgs;
pub use config::{NetConf, NetConfList};
pub use error::CniError;
pub use result::CniResult;
pub use skel::{CmdArgs, Command, Plugin};
pub use version::Version;
