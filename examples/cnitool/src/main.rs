//! cnitool: runs a CNI network's plugins by hand, as libcni (and Go's
//! cnitool on top of it) does, with a few things a runtime would also do:
//! a failed ADD is undone, DEL goes on past a failing plugin, GC keeps the
//! attachments whose namespace still exists, and errors show their code.
//!
//! - `args`: command line and environment;
//! - `netconf`: finding and loading the network list;
//! - `chain`: the verbs over the list;
//! - `exec`: running one plugin;
//! - `cache`: libcni's result cache;
//! - `ordered_json`, `base64`, `sha512`: the formats Go writes.

mod args;
mod base64;
mod cache;
mod chain;
mod exec;
mod failure;
mod netconf;
mod ordered_json;
mod sha512;

use std::io::Write;
use std::process::ExitCode;

use args::{ArgsError, Parsed, Request, Verb};
use chain::{Attachment, Runtime};
use failure::{Failure, Failures, note};
use netconf::{LoadError, NetworkList};

fn main() -> ExitCode {
    let parsed = args::parse(std::env::args_os().collect(), &args::Process);
    match parsed {
        Ok(Parsed::Help) => print_stdout(args::USAGE),
        Ok(Parsed::Version) => print_stdout(&format!(
            "cnitool {} (CNI spec {} to {})\n",
            env!("CARGO_PKG_VERSION"),
            cni_types::version::SUPPORTED[0],
            cni_types::version::LATEST
        )),
        Err(ArgsError::Usage(msg)) => {
            note(format_args!("{msg}\n\n{}", args::USAGE.trim_end()));
            ExitCode::from(2)
        }
        Err(ArgsError::Env(f)) => report(&Failures::from(f)),
        Ok(Parsed::Run(request)) => match run(&request) {
            Ok(()) => ExitCode::SUCCESS,
            Err(failures) => report(&failures),
        },
    }
}

fn print_stdout(text: &str) -> ExitCode {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => report(&Failure::new(format!("cannot write to stdout: {e}")).into()),
    }
}

fn report(failures: &Failures) -> ExitCode {
    for f in &failures.0 {
        note(f);
    }
    ExitCode::FAILURE
}

fn run(req: &Request) -> Result<(), Failures> {
    // libcni checks these names on ADD only; they also build the cache file
    // name, so a bad one must not reach DEL or CHECK either.
    cni_types::validate::network_name(&req.network).map_err(Failure::from)?;
    if req.verb.per_attachment() {
        cni_types::validate::container_id(&req.container_id).map_err(Failure::from)?;
        cni_types::validate::interface_name(&req.ifname).map_err(Failure::from)?;
    }
    let rt = Runtime {
        cni_path_env: std::env::join_paths(&req.cni_path)
            .map_err(|e| Failure::new(format!("CNI_PATH: {e}")))?,
        cni_path: req.cni_path.clone(),
        cache_dir: req.cache_dir.clone(),
    };
    let att = Attachment {
        container_id: req.container_id.clone(),
        netns: req.netns.clone(),
        ifname: req.ifname.clone(),
        cni_args: req.cni_args.clone(),
        cap_args: req.cap_args.clone(),
    };
    let list = load(req, &rt)?;
    let version = list.version()?;
    match req.verb {
        Verb::Add => {
            let result = chain::add(&rt, &list, version, &att)?;
            let mut text = ordered_json::pretty(&result, ordered_json::result_order);
            text.push('\n');
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| Failure::new(format!("added, but cannot print the result: {e}")))?;
            Ok(())
        }
        Verb::Check => chain::check(&rt, &list, version, &att),
        Verb::Del => chain::del(&rt, &list, version, &att),
        Verb::Gc => chain::gc(&rt, &list, version),
        Verb::Status => chain::status(&rt, &list, version),
    }
}

/// The network from NETCONFPATH. For DEL of a network whose config is gone
/// the config cached at ADD is used, so an attachment can still be undone.
fn load(req: &Request, rt: &Runtime) -> Result<NetworkList, Failure> {
    match netconf::load(&req.netconf_dir, &req.network) {
        Ok(list) => Ok(list),
        Err(LoadError::NotFound(f)) if req.verb == Verb::Del => {
            let file = cache::path(&rt.cache_dir, &req.network, &req.container_id, &req.ifname);
            let Ok(Some(cache::Cached::Entry(entry))) = cache::read(&file) else {
                return Err(f);
            };
            let list = netconf::list_from_bytes(entry.config).map_err(|e| {
                Failure::new(format!(
                    "{}; the config cached at ADD is unusable too: {e}",
                    f.msg
                ))
            })?;
            note(format_args!(
                "{}; using the config cached at ADD in {}",
                f.msg,
                file.display()
            ));
            Ok(list)
        }
        Err(e) => Err(e.into()),
    }
}
