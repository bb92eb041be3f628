//! An independent reading of `../shared/docs/hackolade-format.md` ("Finding them" and "Counting"), written
//! for the tests only, so the parser's numbers are checked against a second implementation.

use serde_json::Value;

/// Whether a JSON document is a Hackolade model: an object with a string `modelName` and an array
/// `collections`.
pub fn is_model(v: &Value) -> bool {
    v.get("modelName").is_some_and(Value::is_string)
        && v.get("collections").is_some_and(Value::is_array)
}

fn is_structure(node: &Value) -> bool {
    let t = node.get("type").and_then(Value::as_str);
    matches!(t, Some("choice" | "conditional" | "conditionalItem"))
        || node.get("subschema").and_then(Value::as_bool) == Some(true)
}

/// Dict nodes in a `properties` tree, structure nodes excluded (their children still walked).
fn count_tree(properties: Option<&Value>) -> usize {
    let Some(list) = properties.and_then(Value::as_array) else {
        return 0;
    };
    list.iter()
        .filter(|n| n.is_object())
        .map(|n| usize::from(!is_structure(n)) + count_tree(n.get("properties")))
        .sum()
}

fn find_definition<'a>(model: &'a Value, key: &str, guid: &str) -> Option<&'a Value> {
    model
        .get(key)?
        .get("properties")?
        .as_array()?
        .iter()
        .find(|n| n.get("GUID").and_then(Value::as_str) == Some(guid))
}

/// (entities, attributes) of a model, per the "Counting" section.
pub fn counts(model: &Value) -> (usize, usize) {
    let Some(collections) = model.get("collections").and_then(Value::as_array) else {
        return (0, 0);
    };
    let mut attributes = 0;
    for entity in collections {
        let stub_ref = (entity.get("type").and_then(Value::as_str) == Some("reference"))
            .then(|| entity.get("ref").and_then(Value::as_str))
            .flatten();
        let resolved =
            stub_ref.and_then(|guid| match entity.get("refType").and_then(Value::as_str) {
                Some("external") => find_definition(model, "externalDefinitions", guid),
                Some("polyglot") => find_definition(model, "polyglotDefinitions", guid),
                _ => find_definition(model, "polyglotDefinitions", guid)
                    .or_else(|| find_definition(model, "externalDefinitions", guid)),
            });
        attributes += count_tree(resolved.unwrap_or(entity).get("properties"));
    }
    (collections.len(), attributes)
}
