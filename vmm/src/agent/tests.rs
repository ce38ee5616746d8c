//! The host side against the real guest agent (duet_init::agent) over a
//! Unix socket: a fake VMM answers the hybrid-vsock handshake and hands
//! each connection to a forked agent session, as the guest's agent does
//! with its vsock connections.

use super::*;
use duet_init::agent::{serve_connection, set_size, AgentContext};
use duet_init::config::GuestWorkload;
use std::os::fd::FromRawFd;
use std::os::unix::net::UnixListener;

fn ctx(workload_pid: i32) -> AgentContext {
    AgentContext {
        workload: GuestWorkload {
            argv: vec!["sleep".into(), "1".into()],
            env: vec!["PATH=/usr/bin:/bin".into(), "FROM_WORKLOAD=w".into()],
            workdir: "/".into(),
            hostname: "t".into(),
            pids_max: None,
            agent: true,
            user: None,
            files: Vec::new(),
            network: None,
            template: false,
            tty: None,
        },
        workload_pid,
        cgroup_procs: None,
    }
}

/// A fake VMM on `<dir>/agent.sock`: answers `CONNECT 1024` with OK and
/// serves the connection with a forked agent session; `answer = false`
/// closes it instead (a guest that does not listen).
fn fake_vmm(dir: &Path, workload_pid: i32, answer: bool) -> PathBuf {
    fake_vmm_on(dir, workload_pid, answer, None)
}

/// [`fake_vmm`] whose agent sessions have `console` as fd 0, as the
/// guest's agent has the console from PID 1.
fn fake_vmm_on(dir: &Path, workload_pid: i32, answer: bool, console: Option<RawFd>) -> PathBuf {
    let path = dir.join(SOCKET);
    let l = UnixListener::bind(&path).unwrap();
    let c = ctx(workload_pid);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let mut s = s.unwrap();
            let mut line = Vec::new();
            let mut b = [0u8; 1];
            while s.read(&mut b).unwrap() == 1 && b[0] != b'\n' {
                line.push(b[0]);
            }
            assert_eq!(line, b"CONNECT 1024");
            if !answer {
                continue;
            }
            s.write_all(b"OK 1073741824\n").unwrap();
            // SAFETY: the child only serves the connection and _exits.
            let pid = unsafe { libc::fork() };
            if pid == 0 {
                if let Some(c) = console {
                    // SAFETY: dup2 of a descriptor the test keeps open, in this child.
                    unsafe { libc::dup2(c, 0) };
                }
                let fd = OwnedFd::from(s);
                // As in the guest (forked from PID 1), the session holds
                // nothing but its connection: close what the test harness's
                // other threads had open (the ends of their stdin pipes).
                let keep = fd.as_raw_fd() as u32;
                // SAFETY: close_range with plain integers, in this forked child.
                unsafe {
                    libc::syscall(libc::SYS_close_range, 3u32, keep - 1, 0u32);
                    libc::syscall(libc::SYS_close_range, keep + 1, u32::MAX, 0u32);
                }
                serve_connection(fd, &c);
                // SAFETY: ends the forked session.
                unsafe { libc::_exit(0) }
            }
            drop(s);
            std::thread::spawn(move || {
                let mut st = 0;
                // SAFETY: reaps our own child.
                unsafe { libc::waitpid(pid, &mut st, 0) };
            });
        }
    });
    path
}

struct Ran {
    exit: WorkloadExit,
    out: String,
    err: String,
}

fn run(path: &Path, req: ExecRequest, stdin: Option<&[u8]>) -> Result<Ran, AgentError> {
    let input = stdin.map(|data| {
        let mut fds = [0; 2];
        // SAFETY: pipe writes two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: new descriptors owned here.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut w = std::fs::File::from(w);
        let data = data.to_vec();
        // A pipe holds 64 KiB: write from a thread while the relay reads.
        std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
        r
    });
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = exec_with(
        "test-1",
        path,
        &req,
        ExecIo {
            stdin: input.as_ref().map(|f| f.as_raw_fd()),
            stdout: &mut out,
            stderr: &mut err,
            terminal: None,
        },
    )?;
    Ok(Ran {
        exit,
        out: String::from_utf8_lossy(&out).into(),
        err: String::from_utf8_lossy(&err).into(),
    })
}

fn cmd(args: &[&str]) -> ExecRequest {
    ExecRequest {
        command: args.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[test]
fn exec_output_exit_codes_and_missing_commands() {
    let d = tempfile::tempdir().unwrap();
    let p = fake_vmm(d.path(), 1, true);
    let r = run(&p, cmd(&["echo", "hi"]), None).unwrap();
    assert_eq!((r.exit, r.out.as_str()), (WorkloadExit::Code(0), "hi\n"));
    let r = run(&p, cmd(&["sh", "-c", "echo to-err >&2; exit 7"]), None).unwrap();
    assert_eq!(
        (r.exit, r.err.as_str()),
        (WorkloadExit::Code(7), "to-err\n")
    );
    let r = run(&p, cmd(&["no-such-command-here"]), None).unwrap();
    assert_eq!(r.exit, WorkloadExit::Code(127), "{}", r.err);
    assert!(
        r.err.contains("command not found: no-such-command-here"),
        "{}",
        r.err
    );
    let r = run(&p, cmd(&["/etc/hostname"]), None).unwrap();
    assert_eq!(r.exit, WorkloadExit::Code(126), "{}", r.err);
    let r = run(&p, cmd(&["sh", "-c", "kill -TERM $$"]), None).unwrap();
    assert_eq!(r.exit, WorkloadExit::Signal(15));
}

#[test]
fn exec_env_workdir_and_stdin() {
    let d = tempfile::tempdir().unwrap();
    let p = fake_vmm(d.path(), 1, true);
    let mut req = cmd(&["sh", "-c", "echo $FROM_WORKLOAD $EXTRA; pwd"]);
    req.env = vec!["EXTRA=e".into()];
    req.workdir = Some("/tmp".into());
    let r = run(&p, req, None).unwrap();
    assert_eq!(r.out, "w e\n/tmp\n");
    // Without -i stdin is /dev/null; with it the input arrives and ends.
    let r = run(&p, cmd(&["cat"]), Some(b"ignored")).unwrap();
    assert_eq!(r.out, "", "no -i: no stdin");
    let mut req = cmd(&["sh", "-c", "cat; echo end"]);
    req.interactive = true;
    let big: Vec<u8> = (0..200_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let r = run(&p, req, Some(&big)).unwrap();
    assert_eq!(r.out.len(), big.len() + 4);
    assert!(r.out.ends_with("end\n"));
    let mut req = cmd(&["true"]);
    req.workdir = Some("/no/such/dir".into());
    let e = run(&p, req, None).err().unwrap().to_string();
    assert!(e.contains("test-1") && e.contains("/no/such/dir"), "{e}");
}

#[test]
fn exec_with_a_tty_gets_a_pty() {
    let d = tempfile::tempdir().unwrap();
    let p = fake_vmm(d.path(), 1, true);
    let mut req = cmd(&["sh", "-c", "tty; test -t 0 && echo stdin-is-tty"]);
    req.tty = true;
    let r = run(&p, req, None).unwrap();
    assert_eq!(r.exit, WorkloadExit::Code(0), "{} {}", r.out, r.err);
    assert!(r.out.starts_with("/dev/pts/"), "{:?}", r.out);
    assert!(r.out.contains("stdin-is-tty"), "{:?}", r.out);
}

#[test]
fn kill_signals_the_workload() {
    let mut child = std::process::Command::new("sleep")
        .arg("30")
        .spawn()
        .unwrap();
    let d = tempfile::tempdir().unwrap();
    let p = fake_vmm(d.path(), child.id() as i32, true);
    let mut c = connect_path("test-1", &p, Duration::from_secs(5)).unwrap();
    c.request(&Request::Kill { signal: 15 }).unwrap();
    let st = child.wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(15));
}

#[test]
fn missing_socket_is_not_running_and_a_silent_guest_is_no_agent() {
    let d = tempfile::tempdir().unwrap();
    let e = connect_path("vm-1", &d.path().join(SOCKET), Duration::from_secs(1))
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("vm-1") && e.contains("not running"), "{e}");
    let p = fake_vmm(d.path(), 1, false);
    let t = Instant::now();
    let e = connect_path("vm-1", &p, Duration::from_millis(600))
        .err()
        .unwrap();
    assert!(matches!(e, AgentError::NoAgent { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn bind_replaces_a_stale_socket_and_removes_it_after() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(SOCKET);
    drop(UnixListener::bind(&p).unwrap()); // stale: its listener is gone
    let (fd, file) = bind_listener(&p).unwrap();
    let mode = std::fs::metadata(&p).unwrap().permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
        0o600
    );
    UnixStream::connect(&p).unwrap();
    drop(file);
    assert!(!p.exists());
    drop(fd);
}

#[test]
fn exec_tty_follows_the_terminal_size() {
    let d = tempfile::tempdir().unwrap();
    let p = fake_vmm(d.path(), 1, true);
    // A terminal of our own (the CLI's, in real use) of 33 rows, 77 columns.
    let (mut m, mut s) = (0, 0);
    // SAFETY: openpty writes two descriptors.
    assert_eq!(
        unsafe {
            libc::openpty(
                &mut m,
                &mut s,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        },
        0
    );
    // SAFETY: new descriptors owned here.
    let (_m, s) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    let ws = libc::winsize {
        ws_row: 33,
        ws_col: 77,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ with a valid winsize on our pty.
    assert_eq!(
        unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCSWINSZ, &ws) },
        0
    );
    let mut req = cmd(&["stty", "size"]);
    req.tty = true;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let exit = exec_with(
        "test-1",
        &p,
        &req,
        ExecIo {
            stdin: None,
            stdout: &mut out,
            stderr: &mut err,
            terminal: Some(s.as_raw_fd()),
        },
    )
    .unwrap();
    let out = String::from_utf8_lossy(&out);
    assert_eq!(exit, WorkloadExit::Code(0), "{out}");
    assert_eq!(out.trim(), "33 77");
}

#[test]
fn output_to_a_full_nonblocking_pipe_is_not_dropped() {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the descriptors are new and ours.
    let (mut r, mut w) = unsafe {
        (
            std::fs::File::from_raw_fd(fds[0]),
            std::fs::File::from_raw_fd(fds[1]),
        )
    };
    // SAFETY: fcntl on our write end, as a Go program leaves its pipes.
    unsafe { libc::fcntl(fds[1], libc::F_SETFL, libc::O_NONBLOCK) };
    let data: Vec<u8> = (0..(512u32 << 10)).map(|i| (i % 251) as u8).collect();
    let want = data.clone();
    let reader = std::thread::spawn(move || {
        // A slow reader: the 64 KiB pipe fills many times over.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        got
    });
    write_out(&mut w, &data);
    drop(w);
    assert!(
        reader.join().unwrap() == want,
        "every byte arrives, in order"
    );
}

fn wait_for_size(fd: RawFd, want: (u16, u16)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while window_size(fd) != Some(want) {
        assert!(
            Instant::now() < deadline,
            "the console is {:?}, not {want:?}",
            window_size(fd)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `duet run -t` / an engine's tty: the guest console follows the size of
/// the host's terminal, at the start and after each resize, through the
/// agent; an agent without a console says so.
#[test]
fn the_console_follows_the_host_terminals_size() {
    let t = tempfile::tempdir().unwrap();
    let (_console_master, console) = duet_init::agent::pty().unwrap();
    set_size(console.as_raw_fd(), 24, 80).unwrap();
    let sock = fake_vmm_on(t.path(), 1, true, Some(console.as_raw_fd()));
    let (host_master, host) = duet_init::agent::pty().unwrap();
    set_size(host_master.as_raw_fd(), 33, 111).unwrap();
    let follower = ConsoleFollower::start("t", &sock, host.as_raw_fd(), Some((24, 80)));
    wait_for_size(console.as_raw_fd(), (33, 111));
    set_size(host_master.as_raw_fd(), 50, 132).unwrap();
    wait_for_size(console.as_raw_fd(), (50, 132));
    drop(follower);

    let plain = tempfile::tempdir().unwrap();
    let not_a_console = std::fs::File::open("/dev/null").unwrap();
    let sock = fake_vmm_on(plain.path(), 1, true, Some(not_a_console.as_raw_fd()));
    let e = connect_path("t", &sock, Duration::from_secs(5))
        .unwrap()
        .request(&Request::ConsoleSize { rows: 1, cols: 1 })
        .unwrap_err();
    assert!(e.to_string().contains("no console"), "{e}");
}
