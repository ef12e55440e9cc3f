//! The chaos network: one hub namespace with two bridges, one namespace per
//! candidate, veth pairs between them, and the faults cut on those links.
//!
//! ```text
//!  candidate ns lhc<pid>-c<i>            hub ns lhc<pid>-h
//!   s0 10.201.0.(10+i)  <--veth-->  s<i> -- bridge bstore 10.201.0.1  (store forwarders)
//!   r0 10.202.0.(10+i)  <--veth-->  r<i> -- bridge breg 10.202.0.1  (the register)
//! ```
//!
//! With `members > 0` (the etcd cluster in namespaces), member `k` gets
//! `lhc<pid>-m<k>` with a client link `c0` 10.201.0.(100+k) into `bstore` and
//! a peer link `p0` 10.203.0.(100+k) into a third bridge `bpeer`, so a member
//! can be cut from its peers while its clients still reach it.
//!
//! The store link (`s`) and the register link (`r`) are separate, so a
//! candidate cut from the store still reaches the fenced register: exactly
//! the case a leader's local deadline exists for. The addresses exist only
//! inside these namespaces. The runner's own sockets (store forwarders and the
//! register) are created inside the hub namespace by a short-lived thread that
//! `setns(2)`s into it; a socket keeps the namespace it was created in.
//!
//! Every namespace is named `lhc<runner pid>-...`; [`Net`] deletes its own on
//! drop (veths die with their namespace), and [`sweep_leftovers`] deletes those
//! of runners that no longer run (or that carry our own pid) at start.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::Command;

/// The store side of the hub: store forwarders listen here.
pub(crate) const HUB_STORE_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 0, 1);
/// The register side of the hub: the fenced register listens here.
pub(crate) const HUB_REGISTER_IP: Ipv4Addr = Ipv4Addr::new(10, 202, 0, 1);
/// A MAC address no interface has: a permanent neighbour entry pointing at it
/// makes the kernel send the frames nowhere (a silent one-way drop).
const NOWHERE_MAC: &str = "02:00:00:00:de:ad";
const PREFIX: &str = "lhc";

/// Runs `ip ARGS`, failing with its stderr and the command line.
pub(crate) fn ip(args: &[&str]) -> Result<(), String> {
    // `ip -n NS ...` (like `ip netns exec`) also makes a private mount
    // namespace and remounts /sys, which fails where `/` is not a mount point
    // (a chroot: "mount --make-rslave /" failed: Invalid argument). Only the
    // network namespace matters here, so enter just that one.
    let mut cmd = match args {
        ["-n", ns, rest @ ..] => {
            let mut cmd = in_netns(ns);
            cmd.arg("ip").args(rest);
            cmd
        }
        _ => {
            let mut cmd = Command::new("ip");
            cmd.args(args);
            cmd
        }
    };
    let out = cmd.output().map_err(|e| {
        format!(
            "cannot run `ip {}`: {e}; install iproute2 and util-linux",
            args.join(" ")
        )
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A command that runs its arguments in the network namespace `ns` (and no
/// other namespace): `nsenter --net=/run/netns/NS -- ...`. nsenter execs the
/// program, so the child's pid is the program's.
pub(crate) fn in_netns(ns: &str) -> Command {
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{ns}")).arg("--");
    cmd
}

/// The namespaces of one chaos run; deleted on drop.
#[derive(Debug)]
pub(crate) struct Net {
    hub: String,
    candidates: Vec<String>,
    members: Vec<String>,
    created: Vec<String>,
}

impl Net {
    /// Creates the hub and `n` candidate namespaces with their links.
    ///
    /// # Errors
    /// `ip netns add` failed (not root, no netns support) or a link could not
    /// be made; the message says which command and why.
    pub(crate) fn create(n: usize, members: usize) -> Result<Net, String> {
        let base = format!("{PREFIX}{}-", std::process::id());
        let mut net = Net {
            hub: format!("{base}h"),
            candidates: (0..n).map(|i| format!("{base}c{i}")).collect(),
            members: (0..members).map(|k| format!("{base}m{k}")).collect(),
            created: Vec::new(),
        };
        net.add_ns(&net.hub.clone()).map_err(|e| {
            format!(
                "{e}\nthe chaos suite needs network namespaces: run it as root (CAP_SYS_ADMIN and CAP_NET_ADMIN) on Linux with iproute2"
            )
        })?;
        let hub = net.hub.clone();
        ip(&["-n", &hub, "link", "add", "bstore", "type", "bridge"])?;
        ip(&["-n", &hub, "link", "add", "breg", "type", "bridge"])?;
        ip(&["-n", &hub, "addr", "add", "10.201.0.1/24", "dev", "bstore"])?;
        ip(&["-n", &hub, "addr", "add", "10.202.0.1/24", "dev", "breg"])?;
        ip(&["-n", &hub, "link", "set", "bstore", "up"])?;
        ip(&["-n", &hub, "link", "set", "breg", "up"])?;
        for (i, ns) in net.candidates.clone().iter().enumerate() {
            net.add_ns(ns)?;
            for (side, bridge, subnet) in [("s", "bstore", 201), ("r", "breg", 202)] {
                let inner = format!("{side}0");
                let outer = format!("{side}{i}");
                ip(&[
                    "-n", ns, "link", "add", &inner, "type", "veth", "peer", "name", &outer,
                    "netns", &hub,
                ])?;
                ip(&["-n", &hub, "link", "set", &outer, "master", bridge])?;
                ip(&["-n", &hub, "link", "set", &outer, "up"])?;
                let addr = format!("10.{subnet}.0.{}/24", 10 + i);
                ip(&["-n", ns, "addr", "add", &addr, "dev", &inner])?;
                ip(&["-n", ns, "link", "set", &inner, "up"])?;
            }
        }
        if !net.members.is_empty() {
            ip(&["-n", &hub, "link", "add", "bpeer", "type", "bridge"])?;
            ip(&["-n", &hub, "link", "set", "bpeer", "up"])?;
        }
        for (k, ns) in net.members.clone().iter().enumerate() {
            net.add_ns(ns)?;
            for (inner, outer, bridge, subnet) in [
                ("c0", format!("c{k}"), "bstore", 201),
                ("p0", format!("p{k}"), "bpeer", 203),
            ] {
                ip(&[
                    "-n", ns, "link", "add", inner, "type", "veth", "peer", "name", &outer,
                    "netns", &hub,
                ])?;
                ip(&["-n", &hub, "link", "set", &outer, "master", bridge])?;
                ip(&["-n", &hub, "link", "set", &outer, "up"])?;
                let addr = format!("10.{subnet}.0.{}/24", 100 + k);
                ip(&["-n", ns, "addr", "add", &addr, "dev", inner])?;
                ip(&["-n", ns, "link", "set", inner, "up"])?;
            }
        }
        Ok(net)
    }

    /// The namespace of store member `k`.
    pub(crate) fn member_ns(&self, k: usize) -> &str {
        &self.members[k]
    }

    /// Member `k`'s client address (in its namespace, on the store bridge).
    pub(crate) fn member_client_ip(k: usize) -> String {
        format!("10.201.0.{}", 100 + k)
    }

    /// Member `k`'s peer address (on the peer bridge).
    pub(crate) fn member_peer_ip(k: usize) -> String {
        format!("10.203.0.{}", 100 + k)
    }

    /// Cuts member `k` from its peers; its clients still reach it.
    pub(crate) fn isolate_member(&self, k: usize) -> Result<(), String> {
        ip(&["-n", &self.members[k], "link", "set", "p0", "down"])
    }

    /// Undoes [`isolate_member`](Self::isolate_member).
    pub(crate) fn rejoin_member(&self, k: usize) -> Result<(), String> {
        ip(&["-n", &self.members[k], "link", "set", "p0", "up"])
    }

    /// Every (namespace, device, address) a store answers from: the hub's
    /// forwarders and the members in namespaces.
    fn store_sides(&self) -> Vec<(String, &'static str, String)> {
        let mut sides = vec![(self.hub.clone(), "bstore", HUB_STORE_IP.to_string())];
        for (k, ns) in self.members.iter().enumerate() {
            sides.push((ns.clone(), "c0", Self::member_client_ip(k)));
        }
        sides
    }

    fn add_ns(&mut self, name: &str) -> Result<(), String> {
        ip(&["netns", "add", name])?;
        self.created.push(name.to_owned());
        ip(&["-n", name, "link", "set", "lo", "up"])
    }

    /// The namespace of candidate `i`.
    pub(crate) fn candidate_ns(&self, i: usize) -> &str {
        &self.candidates[i]
    }

    /// Candidate `i`'s address on the store bridge.
    fn candidate_store_ip(i: usize) -> String {
        format!("10.201.0.{}", 10 + i)
    }

    /// Binds a TCP listener on `ip:0` inside the hub namespace.
    pub(crate) fn bind_in_hub(&self, ip: Ipv4Addr) -> Result<std::net::TcpListener, String> {
        let path = format!("/run/netns/{}", self.hub);
        let addr = SocketAddr::V4(SocketAddrV4::new(ip, 0));
        std::thread::spawn(move || -> Result<std::net::TcpListener, String> {
            let file =
                std::fs::File::open(&path).map_err(|e| format!("cannot open {path}: {e}"))?;
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("setns({path}) failed: {e}; run as root"))?;
            let listener = std::net::TcpListener::bind(addr)
                .map_err(|e| format!("cannot bind {addr} in {path}: {e}"))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| format!("cannot make the listener non-blocking: {e}"))?;
            Ok(listener)
        })
        .join()
        .map_err(|_| "the setns thread panicked".to_owned())?
    }

    /// The hub namespace (where the store forwarders and the register listen,
    /// and from where every store member is reachable).
    pub(crate) fn hub_ns(&self) -> &str {
        &self.hub
    }

    /// Aborts every TCP connection between candidate `i` and the store, on
    /// both ends (`ss -K`, which needs a kernel with INET_DIAG_DESTROY): the
    /// bytes still queued in them (a request not yet delivered, an answer not
    /// yet read) are thrown away, as when a connection is reset. The client
    /// sees its connection aborted and connects again.
    pub(crate) fn reset_store_connections(&self, i: usize) -> Result<(), String> {
        let me = Self::candidate_store_ip(i);
        ss_kill(&self.candidates[i], "10.201.0.0/24")?;
        for (ns, _, _) in self.store_sides() {
            ss_kill(&ns, &me)?;
        }
        Ok(())
    }

    /// Cuts candidate `i` from the store in both directions (its store link down).
    pub(crate) fn cut(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.candidates[i], "link", "set", "s0", "down"])
    }

    /// Undoes [`cut`](Self::cut).
    pub(crate) fn uncut(&self, i: usize) -> Result<(), String> {
        ip(&["-n", &self.candidates[i], "link", "set", "s0", "up"])
    }

    /// Drops what candidate `i` sends to the store, silently; the store's
    /// packets still reach it.
    pub(crate) fn drop_outgoing(&self, i: usize) -> Result<(), String> {
        for (_, _, addr) in self.store_sides() {
            neigh_to_nowhere(&self.candidates[i], &addr, "s0")?;
        }
        Ok(())
    }

    /// Undoes [`drop_outgoing`](Self::drop_outgoing).
    pub(crate) fn undrop_outgoing(&self, i: usize) -> Result<(), String> {
        for (_, _, addr) in self.store_sides() {
            ip(&[
                "-n",
                &self.candidates[i],
                "neigh",
                "del",
                &addr,
                "dev",
                "s0",
            ])?;
        }
        Ok(())
    }

    /// Drops what the store sends to candidate `i`, silently; the
    /// candidate's packets still reach the store.
    pub(crate) fn drop_incoming(&self, i: usize) -> Result<(), String> {
        let addr = Self::candidate_store_ip(i);
        for (ns, dev, _) in self.store_sides() {
            neigh_to_nowhere(&ns, &addr, dev)?;
        }
        Ok(())
    }

    /// Undoes [`drop_incoming`](Self::drop_incoming).
    pub(crate) fn undrop_incoming(&self, i: usize) -> Result<(), String> {
        let addr = Self::candidate_store_ip(i);
        for (ns, dev, _) in self.store_sides() {
            ip(&["-n", &ns, "neigh", "del", &addr, "dev", dev])?;
        }
        Ok(())
    }
}

/// In namespace `ns`, aborts every TCP socket whose peer is in `dst` (an
/// address or a prefix).
fn ss_kill(ns: &str, dst: &str) -> Result<(), String> {
    let out = in_netns(ns)
        .args(["ss", "-K", "-t", "-n", "dst", dst])
        .output()
        .map_err(|e| format!("cannot run `ss -K` in {ns}: {e}; install iproute2"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ss -K -t dst {dst}` in {ns} failed ({}): {}; it needs a kernel with CONFIG_INET_DIAG_DESTROY",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// In namespace `ns`, sends frames for `addr` on `dev` to a MAC nobody has.
fn neigh_to_nowhere(ns: &str, addr: &str, dev: &str) -> Result<(), String> {
    ip(&[
        "-n",
        ns,
        "neigh",
        "replace",
        addr,
        "lladdr",
        NOWHERE_MAC,
        "dev",
        dev,
        "nud",
        "permanent",
    ])
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.created.iter().rev() {
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("chaos: cleanup: {e}");
            }
        }
    }
}

/// Deletes namespaces named `lhc<pid>-...` whose runner no longer runs, or
/// whose pid is ours (a crashed earlier run with a reused pid). Returns how
/// many it deleted.
pub(crate) fn sweep_leftovers() -> usize {
    let Ok(dir) = std::fs::read_dir("/run/netns") else {
        return 0;
    };
    let me = std::process::id();
    let mut deleted = 0;
    for entry in dir.flatten().take(10_000) {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some((pid, _)) = rest.split_once('-') else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        let dead = !std::path::Path::new(&format!("/proc/{pid}")).exists();
        if (pid == me || dead) && ip(&["netns", "del", &name]).is_ok() {
            deleted += 1;
        }
    }
    deleted
}
