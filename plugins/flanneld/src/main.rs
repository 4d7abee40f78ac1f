//! `flanneld`: the node agent.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal, sigaction};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: nix::libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

/// Prints `lines` on stdout; a closed stdout is an error worth exiting on.
fn say(lines: impl IntoIterator<Item = String>) {
    let mut out = std::io::stdout().lock();
    for line in lines {
        if let Err(e) = writeln!(out, "{line}") {
            flanneld::error!("cannot write to stdout: {e}");
            std::process::exit(1);
        }
    }
}

/// `flanneld install-cni ...`: the init container's step (no shell in the
/// image). Exit 2 on a flag error, 1 when the install failed.
fn install_cni(args: &[String]) -> ! {
    use flanneld::install_cni::{Options, run, usage};
    let opts = match Options::parse(args) {
        Ok(o) => o,
        Err(e) => {
            flanneld::error!("install-cni: {e}");
            std::process::exit(2);
        }
    };
    if opts.help {
        say([usage()]);
        std::process::exit(0);
    }
    match run(&opts, |done| say([done.to_string()])) {
        Ok(()) => std::process::exit(0),
        Err(e) => {
            flanneld::error!("install-cni: {e}");
            std::process::exit(1);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().is_some_and(|a| a == "install-cni") {
        install_cni(&args[1..]);
    }
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
        say([text]);
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
