//! Runs one container the way `duet run` does, without the image store:
//! `run LOWER_DIR CMD ARGS...` (as root). For measuring the backend alone.

use duet_container::ContainerRuntime;
use duet_shared::image::{Image, ImageConfig};
use duet_shared::{InstanceDir, Launch, RunOptions, RunReport, Runtime, WorkloadSpec};
use std::path::PathBuf;

fn main() {
    let mut args = std::env::args().skip(1);
    let lower = PathBuf::from(args.next().expect("usage: run LOWER_DIR CMD ARGS..."));
    let command: Vec<String> = args.collect();
    let timings = std::env::var_os("DUET_TIMINGS").is_some();
    let root = std::env::temp_dir().join("duet-example-run");
    let mut report = RunReport::start("container", "duet", "lower");
    let spec = WorkloadSpec::for_image("lower", command);
    let instance =
        InstanceDir::create(&root, &spec.name, "lower", "container").expect("instance dir");
    let image = Image {
        name: "lower".into(),
        layers: Vec::new(),
        config: ImageConfig::default(),
        source: None,
    };
    let options = RunOptions::default();
    let launch = Launch {
        spec: &spec,
        image: &image,
        layers: vec![lower],
        instance: &instance,
        options: &options,
        network: None,
    };
    let result = ContainerRuntime::new().run(&launch, &mut report);
    instance.remove().expect("remove instance dir");
    match result {
        Ok(exit) => {
            if timings {
                eprint!("{}", report.table());
            }
            std::process::exit(exit.shell_code())
        }
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("duet: {msg}");
            std::process::exit(125)
        }
    }
}
