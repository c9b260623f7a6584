use super::*;

fn errors(text: &str) -> Vec<String> {
    match parse_policy(text, Path::new("p.yaml")) {
        Ok(_) => Vec::new(),
        Err(e) => e.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn every_shipped_policy_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let examples = load_paths(&[root.join("examples")], &Rules::default());
    let examples = examples.unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(examples.policies.len(), 9);
    assert!(examples.rules.operations.contains_key("lastn"));
    let default = load_paths(&[root.join("default.yaml")], &Rules::default()).unwrap();
    assert_eq!(default.rules.operations.len(), 1);
    // The default and the examples disagree on purpose (strict compartment, a second
    // operation list): loading both is refused, naming both problems.
    let both = load_paths(
        &[root.join("default.yaml"), root.join("examples")],
        &Rules::default(),
    );
    let both: Vec<String> = both.unwrap_err().iter().map(ToString::to_string).collect();
    assert!(both[0].ends_with("compartment.yaml:6:3: compartment.non_member_types: another policy sets a different value; compartment choices must agree"), "{both:?}");
    assert!(
        both[1].ends_with("operations.yaml:7:11: operations: $everything is defined twice"),
        "{both:?}"
    );
}

#[test]
fn wrong_key_is_located_with_the_expected_keys() {
    let e = errors("name: p\ndeny:\n  - name: r\n    resource_type: [Patient]\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("p.yaml:4:5: "), "{e:?}");
    assert!(
        e[0].contains("resource_type") && e[0].contains("resource_types"),
        "{e:?}"
    );
}

#[test]
fn wrong_type_is_located() {
    let e = errors("name: p\nsearch:\n  max_count: lots\n");
    assert_eq!(e.len(), 1, "{e:?}");
    assert!(e[0].starts_with("p.yaml:3:14: "), "{e:?}");
    let e = errors("name: p\nmode: sometimes\n");
    assert!(e[0].starts_with("p.yaml:2:7: "), "{e:?}");
    assert!(e[0].contains("audit-only"), "{e:?}");
}

#[test]
fn unknown_resource_type_is_located_at_the_value() {
    let e = errors("name: p\ndeny:\n  - name: r\n    resource_types: [Patient, Observaton]\n");
    assert_eq!(
        e,
        vec![
            "p.yaml:4:31: deny.resource_types: unknown resource type `Observaton` (expected an R4 resource type such as Patient or Observation; names are case-sensitive)"
        ]
    );
}

#[test]
fn bad_scope_is_located() {
    let e = errors(
        "name: p\nceilings:\n  - name: c\n    clients: [app]\n    scopes:\n      - patient/Observation.sr\n      - openid\n",
    );
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].starts_with(
            "p.yaml:6:9: ceilings.scopes: `patient/Observation.sr` is not a valid SMART scope"
        ),
        "{e:?}"
    );
    assert!(
        e[1].starts_with("p.yaml:7:9: ceilings.scopes: `openid` is not a data scope"),
        "{e:?}"
    );
}

#[test]
fn semantic_problems_are_all_reported() {
    let text = "name: p\ndeny:\n  - name: r\n    interactions: [erase]\n    operations: [everything]\n  - name: empty\nsearch:\n  forbidden_parameters: [_hass]\n  max_count: 0\nredact:\n  - name: x\n    resource_types: [Patient]\n    clients: [\"a b\"]\n    fields: [Photo, id]\n";
    let e = errors(text);
    let starts: Vec<&str> = e.iter().map(|l| l.split(": ").next().unwrap()).collect();
    assert_eq!(
        starts,
        vec![
            "p.yaml:4:20",
            "p.yaml:5:18",
            "p.yaml:6:11",
            "p.yaml:8:26",
            "p.yaml:9:14",
            "p.yaml:13:15",
            "p.yaml:14:14",
            "p.yaml:14:21"
        ],
        "{e:#?}"
    );
}

#[test]
fn duplicate_names_and_operations_across_files_are_refused() {
    let dir = std::env::temp_dir().join(format!("sg-policy-dup-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let op = "operations:\n  - name: $lastn\n    levels: [type]\n    needs: [search]\n";
    std::fs::write(dir.join("a.yaml"), format!("name: same\n{op}")).unwrap();
    std::fs::write(dir.join("b.yaml"), format!("name: same\n{op}")).unwrap();
    std::fs::write(dir.join("b.tests.yaml"), "not: a policy\n").unwrap();
    let e = load_paths(std::slice::from_ref(&dir), &Rules::default()).unwrap_err();
    let e: Vec<String> = e.iter().map(ToString::to_string).collect();
    assert_eq!(e.len(), 2, "{e:?}");
    assert!(
        e[0].ends_with("b.yaml:1:1: name: a policy named `same` is already loaded"),
        "{e:?}"
    );
    assert!(
        e[1].ends_with("b.yaml:3:11: operations: $lastn is defined twice"),
        "{e:?}"
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn field_paths() {
    let f = parse_field("identifier[system=http://hl7.org/fhir/sid/us-ssn].value").unwrap();
    assert_eq!(f.steps.len(), 2);
    assert_eq!(
        f.steps[0].filter,
        Some(("system".into(), "http://hl7.org/fhir/sid/us-ssn".into()))
    );
    assert!(parse_field("photo.").is_err());
    assert!(parse_field("identifier[system]").is_err());
    assert!(parse_field("meta").is_err());
}
