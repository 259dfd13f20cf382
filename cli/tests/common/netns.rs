//! A network namespace linked to the host by a veth pair on a private /30 that exists only
//! on this machine (`10.213.N.1` on the host end, `10.213.N.2` inside), removed on drop.
//! Bringing the host end down cuts whatever runs inside off from every node outside.

use std::process::{Command, Stdio};

pub struct Netns {
    pub name: String,
    host_if: String,
    /// The host end's address.
    pub host_ip: String,
    /// The address inside the namespace.
    pub inner_ip: String,
}

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Netns {
    /// A namespace `myco-{kind}-{tag}` on the subnet `10.213.{net}.0/30`; None when `ip netns`
    /// fails (not root).
    pub fn create(kind: &str, tag: u32, net: u8) -> Option<Netns> {
        let name = format!("myco-{kind}-{tag}");
        let host_if = format!("m{}h{tag}", &kind[..1]);
        let ns_if = format!("m{}n{tag}", &kind[..1]);
        let host_ip = format!("10.213.{net}.1");
        let inner_ip = format!("10.213.{net}.2");
        let _ = ip(&["netns", "del", &name]);
        let _ = ip(&["link", "del", &host_if]);
        let ok = ip(&["netns", "add", &name])
            && ip(&[
                "link", "add", &host_if, "type", "veth", "peer", "name", &ns_if,
            ])
            && ip(&["link", "set", &ns_if, "netns", &name])
            && ip(&["addr", "add", &format!("{host_ip}/30"), "dev", &host_if])
            && ip(&["link", "set", &host_if, "up"])
            && ip(&[
                "netns",
                "exec",
                &name,
                "ip",
                "addr",
                "add",
                &format!("{inner_ip}/30"),
                "dev",
                &ns_if,
            ])
            && ip(&["netns", "exec", &name, "ip", "link", "set", &ns_if, "up"])
            && ip(&["netns", "exec", &name, "ip", "link", "set", "lo", "up"]);
        let ns = Netns {
            name,
            host_if,
            host_ip,
            inner_ip,
        };
        ok.then_some(ns)
    }

    /// Bring the link up or down (down: the namespace is cut off).
    pub fn link(&self, up: bool) {
        assert!(ip(&[
            "link",
            "set",
            &self.host_if,
            if up { "up" } else { "down" }
        ]));
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", &self.host_if]);
        let _ = ip(&["netns", "del", &self.name]);
    }
}

/// Whether this process runs as root (network namespaces need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
