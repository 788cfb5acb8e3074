//! Time to validate and render a 100-entity spec (the whole `nomnom generate` minus
//! writing), median of 5 runs. `cargo bench -p nomnom-codegen --bench generate`.

use std::time::Instant;

use nomnom_codegen::render::{Databases, RenderOptions, RuntimeDependency, render};

fn main() {
    let text = nomnom_codegen::synthetic_spec(100);
    let options = RenderOptions {
        databases: Databases::Both,
        runtime: RuntimeDependency::Version("0.1.0".into()),
        spec_name: "big.yaml".into(),
        output: "worker".into(),
        own_workspace: false,
    };
    let mut times = Vec::new();
    let mut files = 0;
    for _ in 0..5 {
        let start = Instant::now();
        let project = nomnom_codegen::load_str("big.yaml", &text).expect("valid spec");
        files = render(&project, &options).expect("renders").len();
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "generate 100 entities ({files} files): median {:.3} s of 5 (min {:.3}, max {:.3}); target < 1 s",
        times[2], times[0], times[4]
    );
}
