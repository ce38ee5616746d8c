//! Property tests of the workload spec parser (`WorkloadSpec::parse`):
//! random text and random TOML documents never make it panic, every error
//! names the file, and every spec it accepts (and every valid spec written
//! out as TOML) reads back equal. Each test prints how many cases it ran.

use duet_shared::spec::{SpecError, WorkloadSpec, MAX_MEMORY_MIB, MAX_VCPUS, MIN_MEMORY_MIB};
use duet_shared::{Isolation, Resources};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::path::Path;

/// The file name every error must carry.
const FILE: &str = "specs/w-prop.toml";

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // Shrinking a failure is enough; no file of persisted failures in the tree.
        failure_persistence: None,
        ..Config::default()
    })
}

/// Parses; asserts the outcome's invariants. Returns the spec if accepted.
fn check(text: &str) -> Result<Option<WorkloadSpec>, TestCaseError> {
    let result = std::panic::catch_unwind(|| WorkloadSpec::parse(text, Path::new(FILE)));
    let result = match result {
        Ok(r) => r,
        Err(_) => return Err(TestCaseError::fail(format!("parse panicked on {text:?}"))),
    };
    match result {
        Ok(spec) => {
            // Accepted means valid, and it reads back from its own TOML.
            prop_assert!(spec.validate(Path::new(FILE)).is_ok());
            let again = toml::to_string(&spec)
                .map_err(|e| TestCaseError::fail(format!("{spec:?} does not serialize: {e}")))?;
            let back = WorkloadSpec::parse(&again, Path::new(FILE));
            prop_assert!(
                back.as_ref().is_ok_and(|b| *b == spec),
                "{text:?} -> {spec:?} -> {again:?} -> {back:?}"
            );
            Ok(Some(spec))
        }
        Err(e) => {
            let msg = e.to_string();
            prop_assert!(msg.starts_with(FILE), "error without the file name: {msg}");
            if let SpecError::Parse { line, column, .. } = &e {
                let lines = text.split('\n').count();
                prop_assert!(
                    *line >= 1 && *line <= lines.max(1) && *column >= 1,
                    "{msg} for a {lines}-line text"
                );
            }
            prop_assert!(!msg.contains('\n') || msg.lines().count() < 20, "{msg}");
            Ok(None)
        }
    }
}

/// Strings with the characters that trouble parsers and hostnames.
fn odd_string() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9._-]{0,12}",
        "[ -~]{0,20}",
        any::<String>().prop_map(|s| s.chars().take(16).collect()),
        Just(String::new()),
        Just("\0".to_string()),
        Just("a=b".to_string()),
        Just("/".to_string()),
        Just("é✓\u{202e}".to_string()),
        Just(".hidden".to_string()),
        Just("x".repeat(70)),
    ]
}

/// A TOML value of any type, rendered as TOML text (via the toml crate, so
/// strings are quoted correctly), sometimes broken on purpose.
fn toml_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        odd_string().prop_map(|s| toml::Value::String(s).to_string()),
        any::<i64>().prop_map(|i| i.to_string()),
        prop_oneof![
            Just(0i64),
            Just(1),
            Just(3),
            Just(4),
            Just(64),
            Just(65),
            Just(-1),
            Just(1 << 20),
            Just((1 << 20) + 1)
        ]
        .prop_map(|i| i.to_string()),
        any::<bool>().prop_map(|b| b.to_string()),
        any::<f64>().prop_map(|f| toml::Value::Float(f).to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        Just("\"container\"".to_string()),
        Just("\"vm\"".to_string()),
        Just("\"unterminated".to_string()),
        Just("[1, \"two\",]".to_string()),
        Just("{ a = 1, b = }".to_string()),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|v| format!("[{}]", v.join(", "))),
            prop::collection::vec(("[A-Za-z_=.\"]{1,8}", inner), 0..3).prop_map(|kv| {
                let parts: Vec<String> = kv
                    .into_iter()
                    .map(|(k, v)| format!("{} = {v}", toml::Value::String(k)))
                    .collect();
                format!("{{ {} }}", parts.join(", "))
            }),
        ]
    })
}

/// Keys a spec has (and some it does not), top level and in `[resources]`.
fn top_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("name"),
        Just("image"),
        Just("command"),
        Just("env"),
        Just("workdir"),
        Just("isolation"),
        Just("memory_mb"),
        Just("\"image\""),
        Just("env.PATH"),
        Just("resources.vcpus"),
        Just("bogus"),
    ]
    .prop_map(str::to_string)
}

fn resources_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("memory_mib"),
        Just("vcpus"),
        Just("pids_max"),
        Just("cpus"),
    ]
    .prop_map(str::to_string)
}

/// A value of the right type for `key` (often, not always, a valid one).
fn plausible(key: &str) -> BoxedStrategy<String> {
    let quoted = |re: &'static str| re.prop_map(|s: String| toml::Value::String(s).to_string());
    match key {
        "name" => quoted("[a-zA-Z0-9._-]{0,12}").boxed(),
        "image" | "\"image\"" => quoted("[a-z0-9./:_-]{0,12}").boxed(),
        "command" => prop::collection::vec(odd_string(), 0..4)
            .prop_map(|v| {
                toml::Value::Array(v.into_iter().map(toml::Value::String).collect()).to_string()
            })
            .boxed(),
        "env" => prop::collection::btree_map("[A-Za-z_=]{0,6}", odd_string(), 0..3)
            .prop_map(|m| {
                let parts: Vec<String> = m
                    .into_iter()
                    .map(|(k, v)| {
                        format!("{} = {}", toml::Value::String(k), toml::Value::String(v))
                    })
                    .collect();
                format!("{{ {} }}", parts.join(", "))
            })
            .boxed(),
        "workdir" => prop_oneof![
            quoted("/[a-z/]{0,10}"),
            odd_string().prop_map(|s| toml::Value::String(s).to_string())
        ]
        .boxed(),
        "isolation" => prop_oneof![
            Just("\"container\"".to_string()),
            Just("\"vm\"".to_string()),
            Just("\"VM\"".to_string())
        ]
        .boxed(),
        "memory_mib" => prop_oneof![
            MIN_MEMORY_MIB..=4096u64,
            0u64..8,
            Just(MAX_MEMORY_MIB),
            Just(MAX_MEMORY_MIB + 1)
        ]
        .prop_map(|v| v.to_string())
        .boxed(),
        "vcpus" => (0u32..=70).prop_map(|v| v.to_string()).boxed(),
        "pids_max" => prop_oneof![0u64..100, Just(i64::MAX as u64)]
            .prop_map(|v| v.to_string())
            .boxed(),
        _ => toml_value().boxed(),
    }
}

/// A random TOML document shaped like a spec: some top-level keys, maybe a
/// `[resources]` table, maybe junk lines, in random order and types.
fn toml_document() -> impl Strategy<Value = String> {
    // Mostly a value of the type the key wants (so that many documents are
    // accepted and round-trip), sometimes anything at all.
    let line = top_key().prop_flat_map(|k| {
        let v = prop_oneof![2 => plausible(&k), 1 => toml_value().boxed()];
        (Just(k), v).prop_map(|(k, v)| format!("{k} = {v}"))
    });
    let res_line = resources_key().prop_flat_map(|k| {
        let v = prop_oneof![2 => plausible(&k), 1 => toml_value().boxed()];
        (Just(k), v).prop_map(|(k, v)| format!("{k} = {v}"))
    });
    let junk = prop_oneof![
        Just("[resources]".to_string()),
        Just("[[image]]".to_string()),
        Just("# a comment".to_string()),
        Just("=".to_string()),
        Just("image = \"busybox\"".to_string()),
        "[ -~]{0,16}",
    ];
    (
        prop::collection::vec(prop_oneof![4 => line, 1 => junk], 0..8),
        proptest::option::of(prop::collection::vec(res_line, 0..4)),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(top, res, crlf, with_image)| {
            let mut lines = top;
            if with_image && !lines.iter().any(|l| l.starts_with("image")) {
                lines.insert(0, "image = \"busybox\"".into());
            }
            if let Some(r) = res {
                lines.push("[resources]".into());
                lines.extend(r);
            }
            lines.join(if crlf { "\r\n" } else { "\n" })
        })
}

/// A valid spec, built as a value.
fn valid_spec() -> impl Strategy<Value = WorkloadSpec> {
    (
        "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,20}",
        "[a-z0-9][a-z0-9./:_-]{0,20}",
        prop::collection::vec("[^\0]{0,12}", 0..5),
        prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,8}", "[^\0]{0,12}", 0..4),
        proptest::option::of("/[^\0]{0,16}"),
        proptest::option::of(prop_oneof![Just(Isolation::Container), Just(Isolation::Vm)]),
        (
            MIN_MEMORY_MIB..=MAX_MEMORY_MIB,
            1..=MAX_VCPUS,
            proptest::option::of(1u64..=i64::MAX as u64),
        ),
    )
        .prop_map(
            |(name, image, mut command, env, workdir, isolation, (memory_mib, vcpus, pids_max))| {
                if command.first().is_some_and(|c| c.is_empty()) {
                    command[0] = "true".into();
                }
                WorkloadSpec {
                    name,
                    image,
                    command,
                    env: env.into_iter().collect::<BTreeMap<_, _>>(),
                    workdir,
                    isolation,
                    resources: Resources {
                        memory_mib,
                        vcpus,
                        pids_max,
                    },
                    network: None,
                    ports: Vec::new(),
                    dns: Vec::new(),
                    user: None,
                    groups: Vec::new(),
                }
            },
        )
}

#[test]
fn random_text_never_panics_and_errors_name_the_file() {
    let n = Cell::new(0u32);
    let text = prop_oneof![
        any::<String>(),
        "[ -~\n\t]{0,200}",
        prop::collection::vec(any::<u8>(), 0..200)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
    ];
    runner(3000)
        .run(&text, |t| {
            n.set(n.get() + 1);
            check(&t).map(|_| ())
        })
        .unwrap();
    println!(
        "spec parser: {} random texts parsed without a panic",
        n.get()
    );
}

#[test]
fn random_toml_documents_never_panic_and_accepted_ones_round_trip() {
    let (n, accepted) = (Cell::new(0u32), Cell::new(0u32));
    runner(4000)
        .run(&toml_document(), |doc| {
            n.set(n.get() + 1);
            if check(&doc)?.is_some() {
                accepted.set(accepted.get() + 1);
            }
            Ok(())
        })
        .unwrap();
    println!(
        "spec parser: {} random TOML documents, {} accepted and round-tripped",
        n.get(),
        accepted.get()
    );
    assert!(n.get() >= 4000);
}

#[test]
fn valid_specs_round_trip_through_toml() {
    let n = Cell::new(0u32);
    runner(2000)
        .run(&valid_spec(), |spec| {
            n.set(n.get() + 1);
            prop_assert!(spec.validate(Path::new(FILE)).is_ok(), "{spec:?}");
            let text = toml::to_string(&spec).unwrap();
            let back = WorkloadSpec::parse(&text, Path::new(FILE));
            prop_assert!(
                back.as_ref().is_ok_and(|b| *b == spec),
                "{spec:?}\n{text}\n{back:?}"
            );
            Ok(())
        })
        .unwrap();
    println!(
        "spec parser: {} valid specs written as TOML and read back equal",
        n.get()
    );
}

/// A valid spec with one field replaced by a bad value: an error naming
/// the file and that field, never a panic and never acceptance.
#[test]
fn one_bad_field_is_named() {
    let bad = prop_oneof![
        Just(("name", "\"-x y\"", "`name`")),
        Just(("name", "\"\"", "`name`")),
        Just(("image", "\"\"", "`image`")),
        Just(("image", "7", "image")),
        Just(("command", "[\"\"]", "`command`")),
        Just(("command", "\"sh\"", "command")),
        Just(("workdir", "\"relative\"", "`workdir`")),
        Just(("isolation", "\"hypervisor\"", "isolation")),
        Just(("resources.memory_mib", "3", "`resources.memory_mib`")),
        Just(("resources.memory_mib", "-5", "memory_mib")),
        Just(("resources.vcpus", "0", "`resources.vcpus`")),
        Just(("resources.vcpus", "65", "`resources.vcpus`")),
        Just(("resources.pids_max", "0", "`resources.pids_max`")),
        Just(("resources.cpus", "2", "cpus")),
        Just(("unknown_field", "1", "unknown_field")),
    ];
    let n = Cell::new(0u32);
    runner(1000)
        .run(&(valid_spec(), bad), |(spec, (field, value, named))| {
            n.set(n.get() + 1);
            let mut doc: toml::Table = toml::from_str(&toml::to_string(&spec).unwrap()).unwrap();
            let v: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
                .unwrap()
                .remove("v")
                .unwrap();
            match field.split_once('.') {
                Some((t, k)) => {
                    doc.entry(t)
                        .or_insert_with(|| toml::Value::Table(Default::default()))
                        .as_table_mut()
                        .unwrap()
                        .insert(k.to_string(), v);
                }
                None => {
                    doc.insert(field.to_string(), v);
                }
            }
            let text = toml::to_string(&doc).unwrap();
            prop_assert!(check(&text)?.is_none(), "accepted:\n{text}");
            let msg = WorkloadSpec::parse(&text, Path::new(FILE))
                .unwrap_err()
                .to_string();
            prop_assert!(msg.contains(named), "{msg} does not name {named}:\n{text}");
            Ok(())
        })
        .unwrap();
    println!(
        "spec parser: {} specs with one bad field, each refused naming it",
        n.get()
    );
}
