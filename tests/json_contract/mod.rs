//! docs/json.md is the contract of skpc's JSON output: the tests of each command hold
//! the fields of its documents to the tables there.

/// The field names of the table under the heading `heading` of docs/json.md (the first
/// cell of each row, split where one row documents several fields).
pub fn documented_fields(heading: &str) -> std::collections::BTreeSet<String> {
    let path = format!("{}/../../docs/json.md", env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(&path).expect("docs/json.md");
    let mut in_section = false;
    let mut fields = std::collections::BTreeSet::new();
    for line in doc.lines() {
        if line.starts_with('#') {
            in_section = line.trim_start_matches('#').trim() == heading;
            continue;
        }
        let Some(cell) = line.strip_prefix("| `").filter(|_| in_section) else {
            continue;
        };
        let first = cell.split(" |").next().unwrap_or_default();
        for name in first.split(", ") {
            fields.insert(name.trim_matches('`').to_string());
        }
    }
    assert!(!fields.is_empty(), "no table under {heading}");
    fields
}

pub fn keys(v: &serde_json::Value) -> std::collections::BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("an object: {v}"))
        .keys()
        .cloned()
        .collect()
}
