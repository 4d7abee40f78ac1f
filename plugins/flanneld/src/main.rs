//! `flanneld`: the node agent.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match flanneld::flags::Options::parse(&args, |k| std::env::var(k).ok()) {
        Ok(o) => o,
        Err(e) => {
            flanneld::error!("{e}");
            std::process::exit(2);
        }
    };
    flanneld::log::init(opts.log_level);
    let answer = if opts.help {
        Some(flanneld::flags::usage())
    } else if opts.version {
        Some(format!("flanneld (cni-rs) {}", env!("CARGO_PKG_VERSION")))
    } else {
        None
    };
    if let Some(text) = answer {
        if let Err(e) = writeln!(std::io::stdout(), "{text}") {
            flanneld::error!("cannot write to stdout: {e}");
            std::process::exit(1);
        }
        return;
    }
    let action = SigAction::new(
        SigHandler::Handler(on_signal),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        // SAFETY: the handler only stores to an atomic, which is
        // async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            flanneld::error!("cannot handle {sig}: {e}");
            std::process::exit(1);
        }
    }
    if let Err(e) = flanneld::agent::run(&opts, &STOP) {
        flanneld::error!("{e}");
        std::process::exit(1);
    }
}
