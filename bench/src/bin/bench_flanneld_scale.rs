//! flanneld at scale, as a black box on a real etcd, in simulated hosts:
//! one node with N fake peers, a cluster of M agents, and one node
//! in kube mode beside an API server holding N Nodes (see
//! [`bench::scale`]).
//!
//! usage: bench-flanneld-scale BIN_DIR [--sizes 100,1000,5000] [--agents 50]
//!        [--upstream PATH] [--only single|cluster|kube|wireguard]

#![allow(clippy::print_stdout)] // the figures are this program's output

use bench::cleanup;
use bench::scale::{self, Opts, setup::started};

fn main() {
    started();
    if let Err(e) = cleanup::install() {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    let opts = match Opts::parse(std::env::args().skip(1)) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    if !nix::unistd::geteuid().is_root() {
        eprintln!("error: run me as root: I create network namespaces");
        std::process::exit(1);
    }
    if let Err(e) = scale::run(&opts) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
    cleanup::sweep();
    let left = cleanup::leftovers();
    if !left.is_empty() {
        eprintln!("warning: namespaces left behind: {left:?}");
    }
    println!("\nwall time {:.0} s", started().elapsed().as_secs_f64());
}
