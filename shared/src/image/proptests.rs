//! Property test of layer import: random archives of symlinks (absolute,
//! relative, `..`, chains), whiteouts, opaque markers, hard links, fifos,
//! device nodes and odd names never change anything outside the layer root
//! and never panic. Prints how many cases ran.

use super::confinement_tests::{skip_unless_root, tarball, Sandbox, E};
use super::whiteout::unpack_layer;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::path::Path;

/// Cases per run.
const CASES: u32 = 256;

/// A symlink target before the sandbox's path is known. Every target leads
/// into the sandbox (never above it, never to a real host path), so that even
/// a regression of the confinement damages only the sandbox, where the
/// listing catches it.
#[derive(Debug, Clone)]
enum Target {
    /// `<sandbox>/canary`, absolute.
    CanaryAbsolute,
    /// `../canary`: from the layer root, the canary.
    CanaryRelative,
    /// `../../../...<sandbox>/canary`: far above `/` and back down.
    CanaryClimb,
    /// `<sandbox>/<rest>`, absolute.
    SandboxAbsolute(String),
    /// A relative path without `..`.
    Relative(String),
}

#[derive(Debug, Clone)]
enum Gen {
    Dir(String),
    File(String),
    Sym(String, Target),
    Hard(String, String),
    Fifo(String),
    Dev(String),
}

fn component() -> impl Strategy<Value = String> {
    let plain = prop::sample::select(vec![
        "a",
        "b",
        "x",
        "victim",
        "sub",
        ".",
        ".wh.a",
        ".wh.victim",
    ]);
    // Names an import must refuse (`..`, whiteouts naming nothing) or treat
    // specially (opaque, AUFS metadata), and names that need escaping.
    let odd = prop::sample::select(vec![
        "..",
        ".wh..wh..opq",
        ".wh..",
        ".wh...",
        ".wh.",
        ".wh..wh.plnk",
        "e\u{1b}[1m",
        "é ß",
    ]);
    prop_oneof![6 => plain, 1 => odd].prop_map(str::to_string)
}

fn path() -> impl Strategy<Value = String> {
    (any::<bool>(), prop::collection::vec(component(), 1..4))
        .prop_map(|(abs, parts)| format!("{}{}", if abs { "/" } else { "" }, parts.join("/")))
}

/// A relative path of plain names only (no `..`), for link targets.
fn plain_path() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop::sample::select(vec!["a", "b", "x", "victim", "sub", "deep", "file", "."]),
        1..4,
    )
    .prop_map(|parts| parts.join("/"))
}

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        Just(Target::CanaryAbsolute),
        Just(Target::CanaryRelative),
        Just(Target::CanaryClimb),
        plain_path().prop_map(Target::SandboxAbsolute),
        plain_path().prop_map(Target::Relative),
    ]
}

fn entry() -> impl Strategy<Value = Gen> {
    prop_oneof![
        1 => path().prop_map(Gen::Dir),
        3 => path().prop_map(Gen::File),
        4 => (path(), target()).prop_map(|(p, t)| Gen::Sym(p, t)),
        1 => (path(), path()).prop_map(|(p, t)| Gen::Hard(p, t)),
        1 => path().prop_map(Gen::Fifo),
        1 => path().prop_map(Gen::Dev),
    ]
}

fn concrete(sb: &Sandbox, gens: &[Gen]) -> Vec<E> {
    let canary = sb.canary().display().to_string();
    let t = sb.t.path().display().to_string();
    let climb = format!("{}{}", "../".repeat(12), canary.trim_start_matches('/'));
    gens.iter()
        .map(|g| match g {
            Gen::Dir(p) => E::Dir(format!("{p}/"), 0o755),
            Gen::File(p) => E::File(p.clone(), b"layer data".to_vec()),
            Gen::Sym(p, target) => E::Sym(
                p.clone(),
                match target {
                    Target::CanaryAbsolute => canary.clone(),
                    Target::CanaryRelative => "../canary".to_string(),
                    Target::CanaryClimb => climb.clone(),
                    Target::SandboxAbsolute(rest) => format!("{t}/{rest}"),
                    Target::Relative(rel) => rel.clone(),
                },
            ),
            // Hard-link targets with `..` or a leading `/` must be refused or
            // resolved inside the layer; a hard link is never followed.
            Gen::Hard(p, target) => E::Hard(p.clone(), target.clone()),
            Gen::Fifo(p) => E::Fifo(p.clone()),
            Gen::Dev(p) => E::Dev(p.clone(), 'c', 1, 3),
        })
        .collect()
}

#[test]
fn random_layers_never_change_anything_outside_the_layer_root() {
    if skip_unless_root("random_layers_never_change_anything_outside_the_layer_root") {
        return;
    }
    let mut runner = TestRunner::new(Config {
        cases: CASES,
        failure_persistence: None,
        ..Config::default()
    });
    let ran = std::cell::Cell::new(0u32);
    let (ok, refused) = (std::cell::Cell::new(0u32), std::cell::Cell::new(0u32));
    let result = runner.run(&prop::collection::vec(entry(), 1..12), |gens| {
        ran.set(ran.get() + 1);
        let sb = Sandbox::new();
        let before = sb.outside();
        let entries = concrete(&sb, &gens);
        let r = unpack_layer(&tarball(&entries)[..], &sb.layer(), Path::new("random.tar"));
        if r.is_ok() {
            ok.set(ok.get() + 1);
        } else {
            refused.set(refused.get() + 1);
        }
        prop_assert_eq!(sb.outside(), before, "entries {:?} -> {:?}", entries, r);
        Ok(())
    });
    println!(
        "proptest random_layers_never_change_anything_outside_the_layer_root: {} cases ran ({} imported, {} refused)",
        ran.get(),
        ok.get(),
        refused.get()
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
