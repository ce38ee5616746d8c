//! What a container workload can reach of the process that started duet:
//! inherited file descriptors, the caller's terminal and session (needs root).

mod common;
use common::*;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn inherited_fds_do_not_reach_the_workload() {
    if skip_unless_root("inherited_fds_do_not_reach_the_workload") {
        return;
    }
    let env = Env::new();
    let name = unique("fds");
    let root = std::fs::File::open("/").unwrap();
    let raw = root.as_raw_fd();
    let mut cmd = env.cmd(&[
        "run",
        "--name",
        &name,
        "busybox",
        "--",
        "sh",
        "-c",
        "ls /proc/self/fd/7/ >/dev/null 2>&1 && echo fd7-open; ls /proc/$$/fd; true",
    ]);
    // SAFETY: dup2 in the forked child before exec; async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            // Like `exec 7</ 251</` in a shell: inherited without close-on-exec.
            for fd in [7, 10, 251] {
                if libc::dup2(raw, fd) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        !out.contains("fd7-open"),
        "the caller's fd 7 reached the workload:\n{out}"
    );
    let mut fds: Vec<u32> = out
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    fds.sort();
    // The shell's own 0, 1, 2 (and busybox may hold one more of its own, e.g. 255 for
    // a script: none here since `sh -c`). None of 7, 10, 251.
    assert_eq!(
        fds,
        vec![0, 1, 2],
        "the workload holds fds it did not open:\n{out}"
    );
    env.assert_clean(&name);
}

#[test]
fn workload_leads_its_own_session() {
    if skip_unless_root("workload_leads_its_own_session") {
        return;
    }
    let env = Env::new();
    let name = unique("sid");
    // Fields 5 and 6 of /proc/1/stat: process group and session. Inherited from
    // duet they lie outside the pid namespace and read as 0; after setsid both are 1.
    let o = env.run(&[
        "run",
        "--name",
        &name,
        "busybox",
        "--",
        "cat",
        "/proc/1/stat",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let after_comm = out.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    // after ")": state ppid pgrp session
    assert_eq!(
        (f[2], f[3]),
        ("1", "1"),
        "not in a session of its own: {out}"
    );
    env.assert_clean(&name);
}

/// A pty pair: (master, slave path).
fn open_pty() -> (OwnedFd, String) {
    // SAFETY: standard pty allocation; ptsname_r writes into our buffer.
    unsafe {
        let m = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        assert!(m >= 0);
        assert_eq!(libc::grantpt(m), 0);
        assert_eq!(libc::unlockpt(m), 0);
        let mut buf = [0 as libc::c_char; 128];
        assert_eq!(libc::ptsname_r(m, buf.as_mut_ptr(), buf.len()), 0);
        let name = std::ffi::CStr::from_ptr(buf.as_ptr())
            .to_string_lossy()
            .into_owned();
        (OwnedFd::from_raw_fd(m), name)
    }
}

/// Runs `duet ARGS` with a new pty as its controlling terminal and stdio,
/// as a shell in a terminal would. Returns (exit code, everything the
/// terminal showed, what was left unread in the terminal's input queue).
fn run_on_a_terminal(env: &Env, args: &[&str]) -> (Option<i32>, String, String) {
    let (master, slave_path) = open_pty();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&slave_path)
        .unwrap();
    let mut cmd = env.cmd(args);
    cmd.stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()));
    // SAFETY: setsid and TIOCSCTTY in the forked child; async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            if libc::ioctl(0, libc::TIOCSCTTY, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    // Collect the terminal's output while duet runs.
    let mut m = std::fs::File::from(master.try_clone().unwrap());
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match m.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&all).contains("END-OF-TEST") {
                break;
            }
        }
        all
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "duet did not exit");
        std::thread::sleep(Duration::from_millis(20));
    };
    // Whatever sits in the terminal's input queue now would be read by the
    // caller's shell as typed by the user. Read it raw and without blocking.
    let fd = slave.as_raw_fd();
    // SAFETY: termios calls on the slave we opened; fcntl flags on it.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        libc::tcgetattr(fd, &mut t);
        libc::cfmakeraw(&mut t);
        libc::tcsetattr(fd, libc::TCSANOW, &t);
        libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK);
    }
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: read into a local buffer.
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        pending.extend_from_slice(&buf[..n as usize]);
    }
    // Unblock the reader thread.
    // SAFETY: write to the slave we hold.
    unsafe { libc::write(fd, b"END-OF-TEST\r\n".as_ptr().cast(), 13) };
    let shown = reader.join().unwrap();
    (
        status.code(),
        String::from_utf8_lossy(&shown).into_owned(),
        String::from_utf8_lossy(&pending).into_owned(),
    )
}

/// TIOCSTI from the workload, run from a terminal with `extra` flags:
/// returns what the probe printed; fails if anything reached the caller's
/// terminal's input queue.
fn tiocsti_from_a_terminal(test: &str, extra: &[&str]) -> String {
    let env = Env::new();
    let name = unique("tiocsti");
    let mut args = vec!["run", "--name", &name];
    args.extend_from_slice(extra);
    args.extend([
        "busybox",
        "--",
        "/bin/duet-probe",
        "--tiocsti",
        "echo PWNED\n",
    ]);
    let (code, shown, pending) = run_on_a_terminal(&env, &args);
    assert!(
        !pending.contains("PWNED"),
        "{test}: the workload typed into the caller's terminal: {pending:?}\n{shown}"
    );
    env.assert_clean(&name);
    format!("{code:?} {shown}")
}

/// Without -t the workload's stdin is a pipe where duet's is a terminal:
/// there is no terminal to push input into.
#[test]
fn tiocsti_cannot_type_into_the_callers_terminal_through_pipes() {
    let test = "tiocsti_cannot_type_into_the_callers_terminal_through_pipes";
    if skip_unless_root_and_probe(test) {
        return;
    }
    let shown = tiocsti_from_a_terminal(test, &[]);
    // errno 25: ENOTTY.
    assert!(shown.contains("tiocsti: errno 25"), "{shown}");
}

/// With -t the workload can type, but only into its own pty.
#[test]
fn tiocsti_cannot_type_into_the_callers_terminal_through_its_own_pty() {
    let test = "tiocsti_cannot_type_into_the_callers_terminal_through_its_own_pty";
    if skip_unless_root_and_probe(test) {
        return;
    }
    let shown = tiocsti_from_a_terminal(test, &["-t"]);
    assert!(
        shown.starts_with("Some(0) ") && shown.contains("tiocsti: ok"),
        "the probe could not even use its own terminal: {shown}"
    );
}

#[test]
fn dash_t_on_a_terminal_gives_a_pty_of_its_own_and_restores_the_terminal() {
    let test = "dash_t_on_a_terminal_gives_a_pty_of_its_own_and_restores_the_terminal";
    if skip_unless_root(test) {
        return;
    }
    let env = Env::new();
    let name = unique("pty");
    let (code, shown, _) = run_on_a_terminal(
        &env,
        &[
            "run",
            "-t",
            "--name",
            &name,
            "busybox",
            "--",
            "sh",
            "-c",
            "test -t 0 && test -t 1 && tty; stty size; exit 3",
        ],
    );
    assert_eq!(code, Some(3), "{shown}");
    // The container's own devpts: its first pty, not the caller's /dev/pts/N.
    assert!(shown.contains("/dev/pts/0"), "{shown}");
    env.assert_clean(&name);
}

/// Without -t, as in Docker, a workload started from a terminal gets pipes
/// on all three fds, and its output still reaches the terminal.
#[test]
fn without_dash_t_a_terminal_reaches_the_workload_as_pipes() {
    let test = "without_dash_t_a_terminal_reaches_the_workload_as_pipes";
    if skip_unless_root(test) {
        return;
    }
    let env = Env::new();
    let name = unique("pipes");
    let (code, shown, _) = run_on_a_terminal(
        &env,
        &[
            "run",
            "--name",
            &name,
            "busybox",
            "--",
            "sh",
            "-c",
            "for fd in 0 1 2; do test -t $fd && echo fd$fd-is-a-tty; \
             readlink /proc/self/fd/$fd | sed \"s/^/fd$fd=/; s/:.*//\"; done; exit 4",
        ],
    );
    assert_eq!(code, Some(4), "{shown}");
    assert!(!shown.contains("-is-a-tty"), "{shown}");
    for fd in 0..3 {
        assert!(shown.contains(&format!("fd{fd}=pipe")), "fd {fd}: {shown}");
    }
    env.assert_clean(&name);
}

#[test]
fn setuid_files_a_container_plants_give_host_users_nothing() {
    let test = "setuid_files_a_container_plants_give_host_users_nothing";
    if skip_unless_root_and_probe(test) {
        return;
    }
    let env = Env::new();
    // A state root duet makes itself, below a directory every user can traverse.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.root(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = env.root().join("state");
    let name = unique("suid");
    let o = env
        .cmd(&[
            "run",
            "--keep",
            "--name",
            &name,
            "busybox",
            "--",
            "sh",
            "-c",
            "cp /bin/duet-probe /planted && chmod 4755 /planted",
        ])
        .env("DUET_ROOT", &state)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let instances: Vec<_> = std::fs::read_dir(state.join("instances"))
        .unwrap()
        .flatten()
        .collect();
    assert_eq!(instances.len(), 1);
    let planted = instances[0].path().join("upper/planted");
    assert!(
        planted.is_file(),
        "the kept upper layer holds the planted file"
    );
    // User nobody tries to run it.
    let mut cmd = std::process::Command::new(&planted);
    cmd.arg("--compact");
    // SAFETY: setgroups/setgid/setuid in the forked child before exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    match cmd.output() {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}"),
        Ok(o) => {
            let out = stdout(&o);
            panic!("user nobody ran a file planted by a container (setuid root): {out}");
        }
    }
    let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "the state root is private");
    let id = instances[0].file_name().to_string_lossy().into_owned();
    let rm = env
        .cmd(&["rm", &id])
        .env("DUET_ROOT", &state)
        .output()
        .unwrap();
    assert!(rm.status.success(), "{}", stderr(&rm));
}
