//! Usage errors: exit status 125 and a message that names the bad argument
//! (no root needed; nothing runs).

mod common;
use common::*;

fn duet(args: &[&str]) -> std::process::Output {
    let env = Env::new();
    env.run(args)
}

#[test]
fn usage_errors_exit_125() {
    for args in [
        &["frobnicate"][..],
        &[][..],
        &["run"][..],
        &["run", "--no-such-flag", "busybox"][..],
        &["run", "--memory", "lots", "busybox"][..],
        &["exec"][..],
        &["exec", "web"][..],
        &["exec", "-x", "web", "true"][..],
    ] {
        let o = duet(args);
        assert_eq!(o.status.code(), Some(125), "duet {args:?}: {}", stderr(&o));
        assert!(!stderr(&o).is_empty(), "duet {args:?} says nothing");
    }
    for args in [&["--help"][..], &["--version"][..], &["run", "--help"][..]] {
        let o = duet(args);
        assert_eq!(o.status.code(), Some(0), "duet {args:?}: {}", stderr(&o));
    }
}

#[test]
fn bad_timeouts_are_refused_by_name() {
    for t in [
        "nan", "NaN", "inf", "-inf", "-1", "0", "1e300", "", "abc", "-0",
    ] {
        let arg = format!("--timeout={t}");
        let o = duet(&["run", &arg, "busybox", "--", "true"]);
        assert_eq!(
            o.status.code(),
            Some(125),
            "--timeout {t:?}: {}",
            stderr(&o)
        );
        assert!(
            stderr(&o).contains("--timeout"),
            "--timeout {t:?}: {}",
            stderr(&o)
        );
        assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    }
}

#[test]
fn names_starting_with_a_dash_are_refused() {
    for n in ["-web", "--", "-"] {
        let arg = format!("--name={n}");
        let o = duet(&["run", &arg, "busybox", "--", "true"]);
        assert_eq!(o.status.code(), Some(125), "--name {n:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("name"), "--name {n:?}: {}", stderr(&o));
    }
}
