//! Network namespaces for tests that need processes on addresses of their own and links
//! that the kernel itself breaks: `ip netns`, veth pairs, one bridge, and nft rules on it.
//!
//! A [`Net`] is one private /24 (`10.S.0.0/24`, `S` claimed so that concurrent test
//! processes never share one): a hub namespace holding a bridge, the host on `10.S.0.1`
//! (a veth into the hub), and any number of namespaces ([`Net::space`]) on `10.S.0.2`
//! and up, each with `lo` and one `eth0` on the bridge. Everything between two of them,
//! host included, crosses the hub's bridge, so one nft table there (`bridge e2e`, hook
//! `forward`) plays the bad link: [`Net::cut`] drops everything between two addresses,
//! [`Net::loss`] a share of it at random (`numgen random mod 100 < N`; this kernel has
//! no `tc netem`), [`Net::cut_port`] one port. The senders never see an error: the
//! packets vanish in the middle, as on a real path.
//!
//! Cleanup: dropping a [`Rule`] deletes its rules; dropping the [`Net`] deletes every
//! namespace it made (their veths, the host's veth and every rule go with them) and its
//! claim, also when the test panics. A test process killed outright leaves them behind:
//! the next [`Net::new`] of any test process deletes the namespaces and claims of
//! processes that are gone.
//!
//! Processes run inside with [`Ns::command`] (`ip netns exec`); [`Ns::runtime`] gives a
//! tokio runtime whose threads live in the namespace, for in-process agents (every
//! socket is made in the namespace of the thread that makes it).
//!
//! Needs root (CAP_NET_ADMIN), `ip` (iproute2) and `nft` (nftables); panics saying so
//! otherwise.

use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU8, Ordering};
use std::sync::Mutex;

/// Prefix of every namespace this module makes: `e2e-<pid>-<n>-<role>`.
const PREFIX: &str = "e2e-";
/// Where subnet claims live: one file per claimed `S`, holding the claimer's pid.
const CLAIMS: &str = "/tmp/e2e-netns-claims";

/// One private network of namespaces on a bridge; see the module docs.
pub struct Net {
    /// `e2e-<pid>-<n>`: the prefix of this net's namespaces.
    tag: String,
    subnet: u8,
    hub: String,
    spaces: Mutex<Vec<String>>,
    next_host: AtomicU8,
    claim: PathBuf,
    host_if: String,
}

/// A namespace of a [`Net`], with its address on the net's bridge.
#[derive(Clone, Debug)]
pub struct Ns {
    /// The namespace's name (`ip netns list`).
    pub name: String,
    /// Its address on `eth0`.
    pub addr: Ipv4Addr,
}

/// Rules in the hub's bridge table, deleted when dropped.
pub struct Rule {
    hub: String,
    handles: Vec<u64>,
    what: String,
}

/// Which transport a [`Net::cut_port`] rule matches.
#[derive(Clone, Copy, Debug)]
pub enum Proto {
    Udp,
    Tcp,
}

impl Net {
    /// A new net with the host on `10.S.0.1`. Panics with the reason when namespaces
    /// cannot be made here (not root, `ip` or `nft` missing).
    pub fn new() -> Self {
        preflight();
        reap_stale();
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let tag = format!("{PREFIX}{pid}-{n}");
        let (subnet, claim) = claim_subnet();
        let hub = format!("{tag}-hub");
        // The host's end of its veth: a name unique on the host (at most 15 bytes).
        let host_if = format!("e2e{pid}h{n}");
        assert!(host_if.len() <= 15, "interface name {host_if} too long");
        let net = Self {
            tag,
            subnet,
            hub: hub.clone(),
            spaces: Mutex::new(Vec::new()),
            next_host: AtomicU8::new(2),
            claim,
            host_if: host_if.clone(),
        };
        net.add_namespace(&hub);
        ip(&["-n", &hub, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &hub, "link", "set", "br0", "up"]);
        ip(&[
            "link", "add", &host_if, "type", "veth", "peer", "name", "host", "netns", &hub,
        ]);
        ip(&["-n", &hub, "link", "set", "host", "master", "br0", "up"]);
        let host = format!("{}/24", net.host());
        ip(&["addr", "add", &host, "dev", &host_if]);
        ip(&["link", "set", &host_if, "up"]);
        nft(
            &hub,
            &[
                "add table bridge e2e",
                "add chain bridge e2e forward { type filter hook forward priority 0; policy accept; }",
            ],
        );
        net
    }

    /// The host's address on the net.
    pub fn host(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, self.subnet, 0, 1)
    }

    /// The namespaces made so far (the hub first).
    pub fn namespaces(&self) -> Vec<String> {
        self.spaces.lock().unwrap().clone()
    }

    /// The host's end of the veth into the hub.
    pub fn host_interface(&self) -> &str {
        &self.host_if
    }

    /// The file that claims this net's subnet.
    pub fn claim(&self) -> &std::path::Path {
        &self.claim
    }

    /// A new namespace `<tag>-<role>` on the next free address of the net.
    pub fn space(&self, role: &str) -> Ns {
        let k = self.next_host.fetch_add(1, Ordering::Relaxed);
        assert!(k < 250, "more namespaces than one /24 holds");
        let name = format!("{}-{role}", self.tag);
        self.add_namespace(&name);
        let port = format!("p{k}");
        ip(&[
            "link", "add", "eth0", "netns", &name, "type", "veth", "peer", "name", &port, "netns",
            &self.hub,
        ]);
        ip(&["-n", &self.hub, "link", "set", &port, "master", "br0", "up"]);
        let addr = Ipv4Addr::new(10, self.subnet, 0, k);
        ip(&[
            "-n",
            &name,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", &name, "link", "set", "eth0", "up"]);
        Ns { name, addr }
    }

    /// Drops every packet between `a` and `b`, both ways.
    pub fn cut(&self, a: Ipv4Addr, b: Ipv4Addr) -> Rule {
        let handles = self.both_ways(a, b, "");
        self.rule(handles, format!("cut {a} <-> {b}"))
    }

    /// Drops `pct` percent of the packets between `a` and `b`, each way, at random.
    pub fn loss(&self, a: Ipv4Addr, b: Ipv4Addr, pct: u8) -> Rule {
        assert!(pct <= 100, "loss of {pct} %");
        // nft takes 0..=99 after `<`; 100 % is every packet.
        let matches = if pct == 100 {
            String::new()
        } else {
            format!("numgen random mod 100 < {pct}")
        };
        let handles = self.both_ways(a, b, &matches);
        self.rule(handles, format!("{pct} % loss {a} <-> {b}"))
    }

    /// Drops the `proto` packets between `a` and `b` to or from `port`, both ways.
    pub fn cut_port(&self, a: Ipv4Addr, b: Ipv4Addr, proto: Proto, port: u16) -> Rule {
        let p = match proto {
            Proto::Udp => "udp",
            Proto::Tcp => "tcp",
        };
        let mut handles = self.both_ways(a, b, &format!("{p} dport {port}"));
        handles.extend(self.both_ways(a, b, &format!("{p} sport {port}")));
        self.rule(handles, format!("cut {p} port {port} {a} <-> {b}"))
    }

    /// Adds a counted drop rule for the packets from `a` to `b` and from `b` to `a` that
    /// also match `matches`; their handles.
    fn both_ways(&self, a: Ipv4Addr, b: Ipv4Addr, matches: &str) -> Vec<u64> {
        [(a, b), (b, a)]
            .into_iter()
            .map(|(from, to)| {
                let rule = format!(
                    "add rule bridge e2e forward ip saddr {from} ip daddr {to} {matches} counter drop"
                );
                add_rule(&self.hub, &rule)
            })
            .collect()
    }

    fn rule(&self, handles: Vec<u64>, what: String) -> Rule {
        Rule {
            hub: self.hub.clone(),
            handles,
            what,
        }
    }

    fn add_namespace(&self, name: &str) {
        ip(&["netns", "add", name]);
        self.spaces.lock().unwrap().push(name.to_string());
        ip(&["-n", name, "link", "set", "lo", "up"]);
    }
}

impl Default for Net {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        // The host's veth first (the kernel tears a deleted namespace down in the
        // background, and with it the veth's far end, so it could outlive the test for
        // a moment), then the namespaces (their veths and rules go with them), then the
        // claim.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_if])
            .output();
        for name in self.spaces.lock().unwrap().drain(..).rev() {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
        let _ = std::fs::remove_file(&self.claim);
    }
}

impl Ns {
    /// `ip netns exec NAME program`: a command that runs `program` in this namespace.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// `addr:port` of this namespace.
    pub fn at(&self, port: u16) -> SocketAddr {
        SocketAddr::from((self.addr, port))
    }

    /// A tokio runtime (two workers) whose threads are all in this namespace: futures
    /// spawned on it make their sockets here.
    pub fn runtime(&self) -> NsRuntime {
        let path = format!("/var/run/netns/{}", self.name);
        let rt = std::thread::spawn(move || {
            let f = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&f),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .unwrap_or_else(|e| panic!("setns into {path}: {e}"));
            // Threads the runtime starts from here inherit this thread's namespace.
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
        })
        .join()
        .expect("the namespace's runtime thread panicked");
        NsRuntime(Some(rt))
    }
}

/// A tokio runtime inside a namespace ([`Ns::runtime`]); shut down in the background when
/// dropped (it may be dropped inside another runtime).
pub struct NsRuntime(Option<tokio::runtime::Runtime>);

impl NsRuntime {
    /// Runs `fut` in the namespace.
    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: std::future::Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.0.as_ref().expect("runtime").spawn(fut)
    }
}

impl Drop for NsRuntime {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}

impl Rule {
    /// Packets the rule has dropped so far.
    pub fn packets(&self) -> u64 {
        let out = Command::new("ip")
            .args([
                "netns", "exec", &self.hub, "nft", "-a", "list", "chain", "bridge", "e2e",
                "forward",
            ])
            .output()
            .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .filter(|l| {
                self.handles
                    .iter()
                    .any(|h| l.trim_end().ends_with(&format!("# handle {h}")))
            })
            .filter_map(|l| {
                let rest = l.split("counter packets ").nth(1)?;
                rest.split_whitespace().next()?.parse::<u64>().ok()
            })
            .sum()
    }
}

impl Drop for Rule {
    fn drop(&mut self) {
        for h in &self.handles {
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", &self.hub, "nft", "delete", "rule", "bridge", "e2e",
                ])
                .args(["forward", "handle", &h.to_string()])
                .output();
        }
    }
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rule({})", self.what)
    }
}

/// Root, `ip` and `nft`, or a panic that says which is missing.
fn preflight() {
    assert!(
        rustix::process::geteuid().is_root(),
        "the network-namespace tests need root (CAP_NET_ADMIN) to create namespaces, \
         veths and nft rules; run them as root, as CI does"
    );
    for (tool, pkg) in [("ip", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool).arg("-V").output();
        if let Err(e) = found {
            panic!("the network-namespace tests need `{tool}` ({e}): apt-get install {pkg}");
        }
    }
}

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let o = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr).trim()
    );
}

/// Runs each of `cmds` with nft in namespace `ns`.
fn nft(ns: &str, cmds: &[&str]) {
    for c in cmds {
        let o = Command::new("ip")
            .args(["netns", "exec", ns, "nft", c])
            .output()
            .expect("run nft");
        assert!(
            o.status.success(),
            "nft {c} (in {ns}): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
}

/// Adds `rule` in `ns`; its handle.
fn add_rule(ns: &str, rule: &str) -> u64 {
    let o = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "--echo", "--handle", rule])
        .output()
        .expect("run nft");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success(),
        "nft {rule} (in {ns}): {}",
        String::from_utf8_lossy(&o.stderr).trim()
    );
    out.split("# handle ")
        .nth(1)
        .and_then(|h| h.split_whitespace().next())
        .and_then(|h| h.parse().ok())
        .unwrap_or_else(|| panic!("no handle in nft's echo of {rule}: {out}"))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Claims a free `S` for `10.S.0.0/24`: not on any host route or address, and not
/// claimed by a live process. The claim is a file created exclusively.
fn claim_subnet() -> (u8, PathBuf) {
    std::fs::create_dir_all(CLAIMS).unwrap();
    let routes = Command::new("ip")
        .args(["-4", "route", "show", "table", "all"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let pid = std::process::id();
    let start = (pid % 200) as u16;
    for i in 0..200u16 {
        let s = (20 + (start + i) % 200) as u8;
        if routes.contains(&format!("10.{s}.")) {
            continue;
        }
        let path = PathBuf::from(CLAIMS).join(format!("10.{s}"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                use std::io::Write;
                let _ = write!(f, "{pid}");
                return (s, path);
            }
            Err(_) => continue,
        }
    }
    panic!("no free 10.S.0.0/24 for a test network (claims in {CLAIMS})");
}

/// Deletes the namespaces and subnet claims of test processes that are gone.
fn reap_stale() {
    let list = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    for line in list.lines() {
        let name = line.split_whitespace().next().unwrap_or_default();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let pid = rest.split('-').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !alive(p)) {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
    if let Ok(dir) = std::fs::read_dir(CLAIMS) {
        for e in dir.flatten() {
            let pid = std::fs::read_to_string(e.path())
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            if pid.is_some_and(|p| !alive(p)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}
