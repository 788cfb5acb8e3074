//! Broken specs and the exact diagnostics they produce (file, line, column, label, help).
//! Snapshots sit beside the fixtures in tests/diagnostics/.

use std::path::Path;

use nomnom_codegen::{LoadError, diagnostics::render_plain, load_str};

fn render(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/diagnostics")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    match load_str(name, &text) {
        Ok(_) => panic!("{name} should not validate"),
        Err(err @ LoadError::Problems(_)) => render_plain(&err),
        Err(other) => panic!("unexpected {other:?}"),
    }
}

macro_rules! diagnostics_snapshot {
    ($test:ident, $file:literal) => {
        #[test]
        fn $test() {
            let rendered = render($file);
            insta::with_settings!({snapshot_path => "diagnostics", prepend_module_to_snapshot => false}, {
                insta::assert_snapshot!($file, rendered);
            });
        }
    };
}

diagnostics_snapshot!(unknown_keys_suggest_the_right_one, "unknown_key.yaml");
diagnostics_snapshot!(yaml_syntax_errors_have_line_and_column, "yaml_syntax.yaml");
diagnostics_snapshot!(every_problem_is_reported_at_once, "many_problems.yaml");
diagnostics_snapshot!(hostile_names_never_reach_rust_or_sql, "hostile_names.yaml");
diagnostics_snapshot!(children_must_link_to_their_parent, "children.yaml");
diagnostics_snapshot!(versions_patches_and_reserved_columns, "versions.yaml");
diagnostics_snapshot!(decimals_take_precision_and_scale_together, "decimals.yaml");
diagnostics_snapshot!(
    metadata_formats_columns_and_routes_that_cannot_work,
    "real_world.yaml"
);
diagnostics_snapshot!(
    pointers_and_positions_the_runtime_cannot_read,
    "pointers.yaml"
);
diagnostics_snapshot!(
    selections_and_captures_the_runtime_cannot_read,
    "selections.yaml"
);
diagnostics_snapshot!(records_fanned_out_the_runtime_cannot_route, "fan_out.yaml");
diagnostics_snapshot!(
    unknown_keys_and_other_problems_are_reported_together,
    "unknown_and_semantic.yaml"
);

#[test]
fn the_tpch_example_validates() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tpch/entities.yaml");
    let project = nomnom_codegen::load(&path).unwrap();
    let names: Vec<_> = project.entities.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["order", "lineitem", "customer"]);
    let lineitem = project.entity("lineitem").unwrap();
    assert_eq!(lineitem.parent.as_ref().unwrap().entity, "order");
    assert!(lineitem.field("l_orderkey").unwrap().from_parent);
}
