//! `flanneld install-cni`: puts the CNI plugins and the conflist on the
//! node from an init container, without a shell in the image (what
//! kube-flannel's two init containers do with `cp`).
//!
//! Everything is read and checked first (every plugin readable, the
//! conflist a conflist, every target writable in principle); only then is
//! anything written, plugins first and the conflist last, since a runtime
//! takes the conflist's arrival as "the network is ready" and will then
//! exec the plugins. Each file is replaced atomically ([`atomic`]) and an
//! identical one is left alone, so re-running (every pod restart) is cheap.

pub mod atomic;
pub mod conflist;

use std::fmt;
use std::path::{Path, PathBuf};

pub use atomic::Outcome;

/// Plugins 0755, conflist 0644, as upstream's `cp` leaves them.
const PLUGIN_MODE: u32 = 0o755;
const CONFLIST_MODE: u32 = 0o644;

#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Where the plugins are read from; `None`: the running executable's
    /// directory (the image keeps them beside flanneld).
    pub plugins_from: Option<PathBuf>,
    /// File names of the plugins; empty: install none.
    pub plugins: Vec<String>,
    pub cni_bin_dir: PathBuf,
    /// The conflist to install; `None`: install none.
    pub conflist: Option<PathBuf>,
    pub cni_conf_dir: PathBuf,
    pub conflist_name: String,
    pub help: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            plugins_from: None,
            plugins: ["flannel", "bridge", "host-local"]
                .map(String::from)
                .to_vec(),
            cni_bin_dir: PathBuf::from("/opt/cni/bin"),
            conflist: Some(PathBuf::from("/etc/kube-flannel/cni-conf.json")),
            cni_conf_dir: PathBuf::from("/etc/cni/net.d"),
            conflist_name: "10-flannel.conflist".into(),
            help: false,
        }
    }
}

pub fn usage() -> String {
    "usage: flanneld install-cni [flags]\n\
     copies the CNI plugins and the conflist onto the node, each atomically\n\
     (temporary file, fsync, rename); identical files are left alone\n\
     \x20 --plugins-from DIR     where the plugins are (default: flanneld's own directory)\n\
     \x20 --plugins LIST         comma-separated file names (default flannel,bridge,host-local;\n\
     \x20                        empty: no plugins)\n\
     \x20 --cni-bin-dir DIR      where they go (default /opt/cni/bin)\n\
     \x20 --conflist FILE        the conflist (default /etc/kube-flannel/cni-conf.json;\n\
     \x20                        empty: no conflist)\n\
     \x20 --cni-conf-dir DIR     where it goes (default /etc/cni/net.d)\n\
     \x20 --conflist-name NAME   its name there (default 10-flannel.conflist)\n\
     \x20 --help"
        .to_string()
}

const FLAGS: [&str; 6] = [
    "plugins-from",
    "plugins",
    "cni-bin-dir",
    "conflist",
    "cni-conf-dir",
    "conflist-name",
];

/// A plain file name: no directory part, not `.` or `..`.
fn file_name(flag: &str, v: &str) -> Result<String, String> {
    if v.is_empty() || v == "." || v == ".." || v.contains('/') || v.contains('\0') {
        return Err(format!(
            "invalid value {v:?} for --{flag}: a file name, without a directory"
        ));
    }
    Ok(v.to_string())
}

fn dir(flag: &str, v: &str) -> Result<PathBuf, String> {
    if v.is_empty() {
        return Err(format!("--{flag} needs a directory"));
    }
    Ok(PathBuf::from(v))
}

impl Options {
    fn set(&mut self, flag: &str, v: &str) -> Result<(), String> {
        match flag {
            "plugins-from" => self.plugins_from = Some(dir(flag, v)?),
            "plugins" => {
                self.plugins = v
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| file_name(flag, s))
                    .collect::<Result<_, _>>()?
            }
            "cni-bin-dir" => self.cni_bin_dir = dir(flag, v)?,
            "conflist" => self.conflist = (!v.is_empty()).then(|| PathBuf::from(v)),
            "cni-conf-dir" => self.cni_conf_dir = dir(flag, v)?,
            "conflist-name" => self.conflist_name = file_name(flag, v)?,
            other => return Err(format!("unknown flag --{other} (see install-cni --help)")),
        }
        Ok(())
    }

    /// Parses the arguments after `install-cni` (`--flag value`,
    /// `--flag=value`, `-flag` as flanneld's own).
    pub fn parse(args: &[String]) -> Result<Options, String> {
        let mut opts = Options::default();
        let flags = crate::flags::command_line(
            args,
            |f| FLAGS.contains(&f),
            |_| false,
            "install-cni --help",
        )?;
        let Some(flags) = flags else {
            opts.help = true;
            return Ok(opts);
        };
        for (flag, value) in flags {
            opts.set(&flag, &value)?;
        }
        Ok(opts)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("cannot find flanneld's own directory for the plugins (give --plugins-from): {0}")]
    OwnDir(std::io::Error),
    #[error("plugin {name}: cannot read {}: {source}; nothing was installed", path.display())]
    Plugin {
        name: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("plugin {name}: {} is not a regular file; nothing was installed", path.display())]
    PluginNotFile { name: String, path: PathBuf },
    #[error("cannot read the conflist {}: {source}; nothing was installed", path.display())]
    ConflistRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a usable conflist: {reason}; nothing was installed", path.display())]
    Conflist { path: PathBuf, reason: String },
    #[error("cannot install to {}: {reason}; nothing was installed", path.display())]
    Target { path: PathBuf, reason: String },
    /// The files reported before this one are in place; this one is
    /// whole, old or (when only the directory's sync failed) new.
    #[error("cannot write {}: {source}; the files reported before it are installed, this one is whole (old or new)", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// One line of the report: what happened to which file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Done {
    pub outcome: Outcome,
    pub path: PathBuf,
}

impl fmt::Display for Done {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        match self.outcome {
            Outcome::Installed => write!(f, "installed {path}"),
            Outcome::Replaced => write!(f, "replaced {path}"),
            Outcome::Unchanged => write!(f, "unchanged {path} (identical, left alone)"),
        }
    }
}

/// A file to write: its content (as checked) and where it goes.
struct Planned {
    dest: PathBuf,
    content: Vec<u8>,
    mode: u32,
}

fn read_plugin(name: &str, from: &Path) -> Result<Vec<u8>, InstallError> {
    let path = from.join(name);
    let err = |source| InstallError::Plugin {
        name: name.to_string(),
        path: path.clone(),
        source,
    };
    let md = std::fs::metadata(&path).map_err(err)?;
    if !md.is_file() {
        return Err(InstallError::PluginNotFile {
            name: name.to_string(),
            path,
        });
    }
    std::fs::read(&path).map_err(err)
}

/// The running executable's directory: /proc/self/exe, else (no /proc,
/// e.g. a chroot) the directory of argv[0] when it has one.
fn own_dir() -> Result<PathBuf, InstallError> {
    let exe = std::env::current_exe().or_else(|e| {
        std::env::args_os()
            .next()
            .map(PathBuf::from)
            .filter(|p| p.components().count() > 1)
            .ok_or(InstallError::OwnDir(e))
    })?;
    Ok(exe
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("/")))
}

/// Reads and checks everything; writes nothing.
fn plan(opts: &Options) -> Result<Vec<Planned>, InstallError> {
    let mut out = Vec::new();
    if !opts.plugins.is_empty() {
        let from = match &opts.plugins_from {
            Some(d) => d.clone(),
            None => own_dir()?,
        };
        for name in &opts.plugins {
            out.push(Planned {
                dest: opts.cni_bin_dir.join(name),
                content: read_plugin(name, &from)?,
                mode: PLUGIN_MODE,
            });
        }
    }
    if let Some(path) = &opts.conflist {
        let content = std::fs::read(path).map_err(|source| InstallError::ConflistRead {
            path: path.clone(),
            source,
        })?;
        conflist::check(&content).map_err(|reason| InstallError::Conflist {
            path: path.clone(),
            reason,
        })?;
        out.push(Planned {
            dest: opts.cni_conf_dir.join(&opts.conflist_name),
            content,
            mode: CONFLIST_MODE,
        });
    }
    for p in &out {
        atomic::check_target(&p.dest).map_err(|reason| InstallError::Target {
            path: p.dest.clone(),
            reason,
        })?;
    }
    Ok(out)
}

/// Installs what `opts` names, telling `report` what happened to each
/// file as it is done (so a failure part-way still shows what is in place).
pub fn run(opts: &Options, mut report: impl FnMut(&Done)) -> Result<(), InstallError> {
    for p in plan(opts)? {
        for stale in atomic::sweep(&p.dest) {
            crate::info!(
                "removed {}: left by an install that was interrupted",
                stale.display()
            );
        }
        let outcome =
            atomic::put(&p.dest, &p.content, p.mode).map_err(|source| InstallError::Write {
                path: p.dest.clone(),
                source,
            })?;
        report(&Done {
            outcome,
            path: p.dest,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, String> {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        Options::parse(&args)
    }

    #[test]
    fn flags() {
        assert_eq!(parse(&[]).unwrap(), Options::default());
        let o = parse(&[
            "--plugins-from=/opt/bin",
            "--plugins",
            "flannel, bridge",
            "-cni-bin-dir",
            "/host/opt/cni/bin",
            "--conflist-name=00-x.conflist",
        ])
        .unwrap();
        assert_eq!(o.plugins_from, Some(PathBuf::from("/opt/bin")));
        assert_eq!(o.plugins, ["flannel", "bridge"]);
        assert_eq!(o.cni_bin_dir, PathBuf::from("/host/opt/cni/bin"));
        assert_eq!(o.conflist_name, "00-x.conflist");
        let none = parse(&["--plugins=", "--conflist="]).unwrap();
        assert!(none.plugins.is_empty() && none.conflist.is_none());
        assert!(parse(&["--help"]).unwrap().help);
    }

    #[test]
    fn flag_errors() {
        for (args, want) in [
            (&["--nope=1"][..], "unknown flag --nope"),
            (&["--nope"][..], "unknown flag --nope"),
            (&["--cni-bin-dir"][..], "needs a value"),
            (&["--cni-bin-dir="][..], "needs a directory"),
            (&["--plugins=../bridge"][..], "without a directory"),
            (&["--conflist-name=.."][..], "without a directory"),
            (&["stray"][..], "unexpected argument"),
        ] {
            let e = parse(args).unwrap_err();
            assert!(e.contains(want), "{args:?}: {e}");
        }
    }
}
