//! duet's bridge network for containers, inside a network namespace each
//! test makes (a thread that unshares CLONE_NEWNET: duet, its monitors,
//! nft and wget are its children there), so the host's links, firewall and
//! sysctls are never touched; the namespace ends with the thread.

mod common;

use common::{skip_unless_root, stderr, stdout, unique, Env};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `f` on a thread in a new network namespace with `lo` up.
fn in_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare of this thread's network namespace only.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "unshare -n"
            );
            let up = Command::new("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .unwrap();
            assert!(up.success());
            f()
        })
        .join()
        .unwrap()
    })
}

/// Root and nft, or a skip (strict CI fails instead).
fn skip(test: &str) -> bool {
    if skip_unless_root(test) {
        return true;
    }
    if Command::new("nft").arg("--version").output().is_err() {
        let why = "needs nft (Debian package nftables; scripts/install.sh installs it)";
        if std::env::var_os("DUET_TEST_STRICT").is_some() {
            panic!("{test}: {why}");
        }
        eprintln!("skipping {test}: {why}");
        return true;
    }
    false
}

/// An Env whose default network is duet's own default (bridge).
fn bridge_env() -> Env {
    let env = Env::new();
    std::fs::remove_file(env.root().join("network.toml")).unwrap();
    env
}

fn ok(env: &Env, args: &[&str]) -> String {
    let o = env.run(args);
    assert!(
        o.status.success(),
        "duet {args:?}: {}{}",
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

fn wget(url: &str) -> Option<String> {
    let o = Command::new("wget")
        .args(["-qO-", "-T", "5", "-t", "1", url])
        .output()
        .unwrap();
    o.status.success().then(|| stdout(&o))
}

/// `ip -4 addr` of eth0 inside a run: its address.
fn address_of(ps_line: &str) -> String {
    ps_line
        .split_whitespace()
        .find(|w| w.starts_with("10.89."))
        .unwrap_or_else(|| panic!("no address in {ps_line}"))
        .to_string()
}

fn ps_line(env: &Env, name: &str) -> String {
    ok(env, &["ps"])
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not in ps"))
        .to_string()
}

/// Nothing of the network is left in this namespace: only `lo`, no nft
/// table, no lease, ip_forward back to 0.
fn assert_network_gone(env: &Env) {
    let links = String::from_utf8(
        Command::new("ip")
            .args(["-o", "link"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    assert_eq!(links.lines().count(), 1, "links left: {links}");
    let rules = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .unwrap();
    assert!(
        rules.stdout.is_empty(),
        "nft rules left: {}",
        stdout(&rules)
    );
    let leases = env.root().join("network/duet0/leases");
    let left: Vec<_> = std::fs::read_dir(&leases)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "leases left: {left:?}");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap()
            .trim(),
        "0"
    );
}

const HTTPD: &str =
    "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";

#[test]
fn httpd_by_address_and_published_port_and_between_instances() {
    if skip("httpd_by_address_and_published_port_and_between_instances") {
        return;
    }
    in_netns(|| {
        let env = bridge_env();
        let (web, other) = (unique("web"), unique("other"));
        ok(
            &env,
            &[
                "run", "-d", "--name", &web, "-p", "8080:80", "busybox", "--", "sh", "-c", HTTPD,
            ],
        );
        ok(
            &env,
            &[
                "run", "-d", "--name", &other, "-p", "80", "busybox", "--", "sh", "-c", HTTPD,
            ],
        );
        let (lw, lo) = (ps_line(&env, &web), ps_line(&env, &other));
        assert!(lw.contains("8080->80/tcp"), "{lw}");
        let (aw, ao) = (address_of(&lw), address_of(&lo));
        assert_ne!(aw, ao, "two instances, two addresses");
        // The port duet picked for `-p 80`.
        let picked = lo
            .split_whitespace()
            .find_map(|w| w.strip_suffix("->80/tcp"))
            .unwrap_or_else(|| panic!("no picked port in {lo}"))
            .to_string();
        let want_web = format!("hello-from-{web}\n");
        let deadline = Instant::now() + Duration::from_secs(10);
        while wget(&format!("http://{aw}/")).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            wget(&format!("http://{aw}/")).as_deref(),
            Some(want_web.as_str()),
            "by address"
        );
        assert_eq!(
            wget("http://127.0.0.1:8080/").as_deref(),
            Some(want_web.as_str()),
            "published on localhost"
        );
        assert_eq!(
            wget(&format!("http://127.0.0.1:{picked}/")).as_deref(),
            Some(format!("hello-from-{other}\n").as_str()),
            "the picked host port"
        );
        // Instance to instance by address, and through the host's published port.
        let get = "printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5";
        let o = ok(
            &env,
            &[
                "run",
                "busybox",
                "--",
                "sh",
                "-c",
                &format!("{get} {aw} 80"),
            ],
        );
        assert!(o.contains(&want_web), "{o}");
        let o = ok(
            &env,
            &[
                "run",
                "busybox",
                "--",
                "sh",
                "-c",
                &format!("{get} 10.89.0.1 8080"),
            ],
        );
        assert!(
            o.contains(&want_web),
            "hairpin through the published port: {o}"
        );
        // A host port taken twice is refused, naming it.
        let o = env.run(&["run", "-p", "8080:80", "busybox", "--", "true"]);
        assert_eq!(o.status.code(), Some(125));
        assert!(
            stderr(&o).contains("host port 8080/tcp is already in use"),
            "{}",
            stderr(&o)
        );
        // resolv.conf and hosts are the instance's.
        let o = ok(
            &env,
            &[
                "run",
                "--dns",
                "192.0.2.53",
                "--hostname",
                "named",
                "busybox",
                "--",
                "cat",
                "/etc/resolv.conf",
                "/etc/hosts",
            ],
        );
        assert!(
            o.contains("nameserver 192.0.2.53") && o.contains("\tnamed"),
            "{o}"
        );
        ok(&env, &["rm", "-f", &web, &other]);
        assert_network_gone(&env);
    });
}

#[test]
fn none_has_only_lo_and_host_shares_the_namespace() {
    if skip("none_has_only_lo_and_host_shares_the_namespace") {
        return;
    }
    in_netns(|| {
        let env = bridge_env();
        let o = ok(
            &env,
            &[
                "run",
                "--network",
                "none",
                "busybox",
                "--",
                "ip",
                "-o",
                "link",
            ],
        );
        assert_eq!(o.lines().count(), 1, "{o}");
        assert!(o.contains("lo:"), "{o}");
        Command::new("ip")
            .args(["addr", "add", "192.0.2.77/32", "dev", "lo"])
            .status()
            .unwrap();
        let o = ok(
            &env,
            &[
                "run",
                "--network",
                "host",
                "busybox",
                "--",
                "ip",
                "-o",
                "addr",
            ],
        );
        assert!(o.contains("192.0.2.77"), "the test's namespace: {o}");
        let o = env.run(&[
            "run",
            "--network",
            "none",
            "-p",
            "80",
            "busybox",
            "--",
            "true",
        ]);
        assert_eq!(o.status.code(), Some(125));
        assert!(stderr(&o).contains("ports"), "{}", stderr(&o));
        let o = env.run(&[
            "run",
            "--isolation",
            "vm",
            "--network",
            "host",
            "busybox",
            "--",
            "true",
        ]);
        assert!(stderr(&o).contains("containers only"), "{}", stderr(&o));
        let o = env.run(&["run", "-p", "80:70000", "busybox", "--", "true"]);
        assert!(stderr(&o).contains("70000"), "{}", stderr(&o));
        assert!(
            !env.root().join("network").exists() || {
                assert_network_gone(&env);
                true
            }
        );
    });
}

#[test]
fn fifty_parallel_runs_get_unique_addresses() {
    if skip("fifty_parallel_runs_get_unique_addresses") {
        return;
    }
    in_netns(|| {
        let env = bridge_env();
        // Detached, so all fifty hold their address at once.
        let children: Vec<_> = (0..50)
            .map(|_| {
                env.cmd(&["run", "-d", "busybox", "--", "sleep", "1000"])
                    .stdout(std::process::Stdio::piped())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let ids: Vec<String> = children
            .into_iter()
            .map(|c| {
                let o = c.wait_with_output().unwrap();
                assert!(o.status.success(), "{}", stderr(&o));
                stdout(&o).trim().to_string()
            })
            .collect();
        let mut addrs: Vec<String> = ids
            .iter()
            .map(|id| {
                let o = ok(
                    &env,
                    &["exec", id, "ip", "-4", "-o", "addr", "show", "eth0"],
                );
                o.split_whitespace()
                    .find(|w| w.starts_with("10.89."))
                    .unwrap_or_else(|| panic!("no address: {o}"))
                    .to_string()
            })
            .collect();
        addrs.sort();
        addrs.dedup();
        assert_eq!(addrs.len(), 50, "duplicate addresses");
        let mut rm = vec!["rm", "-f"];
        rm.extend(ids.iter().map(String::as_str));
        ok(&env, &rm);
        assert_network_gone(&env);
    });
}

fn wait_gone(pid: i32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sigint_and_kill9_then_gc_leave_nothing() {
    if skip("sigint_and_kill9_then_gc_leave_nothing") {
        return;
    }
    in_netns(|| {
        let env = bridge_env();
        // SIGINT of a foreground run.
        let mut c = env
            .cmd(&["run", "-p", "9090:80", "busybox", "--", "sleep", "100"])
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !env.root().join("network/duet0/leases/10.89.0.2").exists()
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        assert_eq!(c.wait().unwrap().code(), Some(130));
        assert_network_gone(&env);
        // kill -9 of a detached instance's monitor, then gc.
        let name = unique("k9");
        let id = ok(
            &env,
            &[
                "run", "-d", "--name", &name, "-p", "9091:80", "busybox", "--", "sleep", "100",
            ],
        );
        let meta: serde_json::Value = serde_json::from_slice(
            &std::fs::read(
                env.root()
                    .join("instances")
                    .join(id.trim())
                    .join("meta.json"),
            )
            .unwrap(),
        )
        .unwrap();
        let monitor = meta["owner_pid"].as_i64().unwrap() as i32;
        // SAFETY: the monitor is a process this test started (through duet).
        unsafe { libc::kill(monitor, libc::SIGKILL) };
        wait_gone(monitor);
        ok(&env, &["gc"]);
        assert_network_gone(&env);
        env.assert_clean(&name);
    });
}

/// eth0's MAC inside instance `id`.
fn mac_of(env: &Env, id: &str) -> String {
    let o = ok(env, &["exec", id, "cat", "/sys/class/net/eth0/address"]);
    o.trim().to_string()
}

#[test]
fn an_address_leased_again_keeps_its_mac_and_answers_at_once() {
    if skip("an_address_leased_again_keeps_its_mac_and_answers_at_once") {
        return;
    }
    in_netns(|| {
        let env = bridge_env();
        let start = |name: &str| {
            ok(
                &env,
                &[
                    "run", "-d", "--name", name, "busybox", "--", "sh", "-c", HTTPD,
                ],
            )
            .trim()
            .to_string()
        };
        let (first, second) = (unique("lease1"), unique("lease2"));
        let a = start(&first);
        let addr = address_of(&ps_line(&env, &first));
        let mac = mac_of(&env, &a);
        let octets: Vec<String> = addr
            .split('.')
            .map(|o| format!("{:02x}", o.parse::<u8>().unwrap()))
            .collect();
        assert_eq!(mac, format!("02:d0:{}", octets.join(":")), "from {addr}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while wget(&format!("http://{addr}/")).is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        // This namespace now has a neighbour entry for the address.
        assert!(wget(&format!("http://{addr}/")).is_some(), "{addr}");
        ok(&env, &["rm", "-f", &a]);
        let b = start(&second);
        assert_eq!(
            address_of(&ps_line(&env, &second)),
            addr,
            "the lease is reused"
        );
        assert_eq!(mac_of(&env, &b), mac);
        // Right away: with a new MAC the stale entry sent it nowhere for seconds.
        let t0 = Instant::now();
        let mut got = None;
        while got.is_none() && t0.elapsed() < Duration::from_secs(2) {
            got = wget(&format!("http://{addr}/"));
        }
        assert_eq!(
            got,
            Some(format!("hello-from-{second}\n")),
            "the reused address answered in {:?}",
            t0.elapsed()
        );
        ok(&env, &["rm", "-f", &b]);
        assert_network_gone(&env);
    });
}
