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

/// A symlink or hard-link target before the sandbox's path is known.
#[derive(Debug, Clone)]
enum Target {
    CanaryAbsolute,
    Literal(String),
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

fn target() -> impl Strategy<Value = Target> {
    prop_oneof![
        Just(Target::CanaryAbsolute),
        Just(Target::Literal("../canary".into())),
        Just(Target::Literal("../../../../..".into())),
        Just(Target::Literal("/".into())),
        Just(Target::Literal("..".into())),
        Just(Target::Literal("/etc".into())),
        path().prop_map(Target::Literal),
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
    gens.iter()
        .map(|g| match g {
            Gen::Dir(p) => E::Dir(format!("{p}/"), 0o755),
            Gen::File(p) => E::File(p.clone(), b"layer data".to_vec()),
            Gen::Sym(p, Target::CanaryAbsolute) => E::Sym(p.clone(), canary.clone()),
            Gen::Sym(p, Target::Literal(t)) => E::Sym(p.clone(), t.clone()),
            Gen::Hard(p, t) => E::Hard(p.clone(), t.clone()),
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
