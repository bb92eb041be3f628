//! What changed inside a model between two versions: entities, attributes and relationships added, removed,
//! renamed or changed. Entities, attributes and relationships are matched by GUID (falling back to the name,
//! the path for attributes, or the ends for unnamed relationships), so a rename is a rename and not a removal
//! plus an addition. Matching uses hash maps: the cost grows with the model's size, not its square. Pure
//! functions.

use std::collections::HashMap;

use serde::Serialize;

use super::properties::PropertyChanged;
use super::{Attribute, Entity, Model, Relationship};

/// The differences between two versions of one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ModelDiff {
    pub entities_added: Vec<String>,
    pub entities_removed: Vec<String>,
    pub entities_renamed: Vec<Renamed>,
    pub attributes_added: Vec<AttributeRef>,
    pub attributes_removed: Vec<AttributeRef>,
    pub attributes_renamed: Vec<AttributeRenamed>,
    pub attributes_changed: Vec<AttributeChanged>,
    pub relationships_added: Vec<String>,
    pub relationships_removed: Vec<String>,
    pub relationships_renamed: Vec<Renamed>,
    pub relationships_changed: Vec<RelationshipChanged>,
    /// Every property that differs, found in the files ([`super::properties`]); [`diff`] leaves it empty, the
    /// caller that has the files fills it.
    pub properties_changed: Vec<PropertyChanged>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Renamed {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttributeRef {
    pub entity: String,
    pub attribute: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttributeRenamed {
    pub entity: String,
    pub from: String,
    pub to: String,
}

/// One property of an attribute that changed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AttributeChanged {
    pub entity: String,
    pub attribute: String,
    /// type | required | primary_key | description
    pub field: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelationshipChanged {
    pub relationship: String,
    /// parent | child | parent_cardinality | child_cardinality | type
    pub field: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

impl ModelDiff {
    pub fn is_empty(&self) -> bool {
        *self == ModelDiff::default()
    }
}

/// Pairs each old item with a new one: same GUID first, then the same key among items where a GUID is
/// missing on either side. Returns, for each old item, the index of its new match.
pub(crate) fn pair<T>(
    old: &[T],
    new: &[T],
    guid: fn(&T) -> Option<&str>,
    key: fn(&T) -> String,
) -> Vec<Option<usize>> {
    let mut by_guid: HashMap<&str, usize> = HashMap::new();
    let mut by_key: HashMap<String, Vec<usize>> = HashMap::new();
    for (i, n) in new.iter().enumerate() {
        if let Some(g) = guid(n) {
            by_guid.entry(g).or_insert(i);
        }
        by_key.entry(key(n)).or_default().push(i);
    }
    let mut used = vec![false; new.len()];
    let mut out = vec![None; old.len()];
    // GUIDs first, so a key match never steals an item that has its own GUID partner.
    for (o, item) in old.iter().enumerate() {
        if let Some(&i) = guid(item).and_then(|g| by_guid.get(g))
            && !used[i]
        {
            used[i] = true;
            out[o] = Some(i);
        }
    }
    for (o, item) in old.iter().enumerate() {
        if out[o].is_some() {
            continue;
        }
        let g = guid(item);
        if let Some(candidates) = by_key.get(&key(item))
            && let Some(&i) = candidates
                .iter()
                .find(|&&i| !used[i] && (g.is_none() || guid(&new[i]).is_none()))
        {
            used[i] = true;
            out[o] = Some(i);
        }
    }
    out
}

fn entity_guid(e: &Entity) -> Option<&str> {
    e.guid.as_deref()
}
fn entity_key(e: &Entity) -> String {
    e.name.clone()
}
fn attribute_guid(a: &Attribute) -> Option<&str> {
    a.guid.as_deref()
}
fn attribute_key(a: &Attribute) -> String {
    a.path.clone()
}
fn relationship_guid(r: &Relationship) -> Option<&str> {
    r.guid.as_deref()
}

/// Compare two versions of a model.
pub fn diff(old: &Model, new: &Model) -> ModelDiff {
    let mut d = ModelDiff::default();
    let pairs = pair(&old.entities, &new.entities, entity_guid, entity_key);
    let mut matched = vec![false; new.entities.len()];
    // Old entity name → new name, to see relationships through entity renames.
    let mut renamed_entities: HashMap<&str, &str> = HashMap::new();
    for (oe, p) in old.entities.iter().zip(&pairs) {
        match p {
            None => d.entities_removed.push(oe.name.clone()),
            Some(i) => {
                matched[*i] = true;
                let ne = &new.entities[*i];
                if ne.name != oe.name {
                    d.entities_renamed.push(Renamed {
                        from: oe.name.clone(),
                        to: ne.name.clone(),
                    });
                    renamed_entities.insert(&oe.name, &ne.name);
                }
                diff_attributes(&mut d, oe, ne);
            }
        }
    }
    for (i, ne) in new.entities.iter().enumerate() {
        if !matched[i] {
            d.entities_added.push(ne.name.clone());
        }
    }
    diff_relationships(
        &mut d,
        &old.relationships,
        &new.relationships,
        &renamed_entities,
    );
    d
}

fn diff_attributes(d: &mut ModelDiff, oe: &Entity, ne: &Entity) {
    let pairs = pair(
        &oe.attributes,
        &ne.attributes,
        attribute_guid,
        attribute_key,
    );
    let mut matched = vec![false; ne.attributes.len()];
    for (oa, p) in oe.attributes.iter().zip(&pairs) {
        let Some(i) = *p else {
            d.attributes_removed.push(AttributeRef {
                entity: ne.name.clone(),
                attribute: oa.path.clone(),
            });
            continue;
        };
        matched[i] = true;
        let na = &ne.attributes[i];
        if na.path != oa.path {
            d.attributes_renamed.push(AttributeRenamed {
                entity: ne.name.clone(),
                from: oa.path.clone(),
                to: na.path.clone(),
            });
        }
        let mut changed = |field: &str, from: Option<String>, to: Option<String>| {
            if from != to {
                d.attributes_changed.push(AttributeChanged {
                    entity: ne.name.clone(),
                    attribute: na.path.clone(),
                    field: field.to_string(),
                    from,
                    to,
                });
            }
        };
        let ty = |a: &Attribute| match (&a.data_type, &a.mode) {
            (Some(t), Some(m)) => Some(format!("{t} ({m})")),
            (Some(t), None) => Some(t.clone()),
            (None, m) => m.clone(),
        };
        changed("type", ty(oa), ty(na));
        changed(
            "required",
            Some(oa.required.to_string()),
            Some(na.required.to_string()),
        );
        changed(
            "primary_key",
            Some(oa.primary_key.to_string()),
            Some(na.primary_key.to_string()),
        );
        changed(
            "description",
            oa.description.clone(),
            na.description.clone(),
        );
    }
    for (i, na) in ne.attributes.iter().enumerate() {
        if !matched[i] {
            d.attributes_added.push(AttributeRef {
                entity: ne.name.clone(),
                attribute: na.path.clone(),
            });
        }
    }
}

/// A relationship's identity for people: its name, else its ends.
pub(crate) fn rel_label(r: &Relationship) -> String {
    match &r.name {
        Some(n) if !n.is_empty() => n.clone(),
        _ => format!(
            "{} -> {}",
            r.parent_entity.as_deref().unwrap_or("?"),
            r.child_entity.as_deref().unwrap_or("?")
        ),
    }
}

fn diff_relationships(
    d: &mut ModelDiff,
    old: &[Relationship],
    new: &[Relationship],
    renamed_entities: &HashMap<&str, &str>,
) {
    let pairs = pair(old, new, relationship_guid, rel_label);
    let mut matched = vec![false; new.len()];
    // An end that names a renamed entity is compared under the entity's new name.
    let through = |e: &Option<String>| -> Option<String> {
        e.as_deref()
            .map(|n| renamed_entities.get(n).copied().unwrap_or(n).to_string())
    };
    for (o, p) in old.iter().zip(&pairs) {
        let Some(i) = *p else {
            d.relationships_removed.push(rel_label(o));
            continue;
        };
        matched[i] = true;
        let n = &new[i];
        if rel_label(n) != rel_label(o) && o.name.as_deref().is_some_and(|s| !s.is_empty()) {
            d.relationships_renamed.push(Renamed {
                from: rel_label(o),
                to: rel_label(n),
            });
        }
        let fields = [
            ("parent", through(&o.parent_entity), n.parent_entity.clone()),
            ("child", through(&o.child_entity), n.child_entity.clone()),
            (
                "parent_cardinality",
                o.parent_cardinality.clone(),
                n.parent_cardinality.clone(),
            ),
            (
                "child_cardinality",
                o.child_cardinality.clone(),
                n.child_cardinality.clone(),
            ),
            (
                "type",
                o.relationship_type.clone(),
                n.relationship_type.clone(),
            ),
        ];
        for (field, from, to) in fields {
            if from != to {
                d.relationships_changed.push(RelationshipChanged {
                    relationship: rel_label(n),
                    field: field.to_string(),
                    from,
                    to,
                });
            }
        }
    }
    for (i, n) in new.iter().enumerate() {
        if !matched[i] {
            d.relationships_added.push(rel_label(n));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Parsed, parse_hackolade};

    fn model(json: &str) -> Model {
        match parse_hackolade(json.as_bytes()) {
            Parsed::Model(m) => m,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn renames_are_matched_by_guid() {
        let old = model(
            r#"{"modelName":"m","collections":[
                {"GUID":"e1","collectionName":"Customer","properties":[
                    {"GUID":"a1","name":"id","type":"string","primaryKey":true},
                    {"GUID":"a2","name":"mail","type":"string"},
                    {"GUID":"a3","name":"gone","type":"string"}]},
                {"GUID":"e2","collectionName":"Old","properties":[]}],
              "relationships":[{"name":"r1","parentCollection":"e1","childCollection":"e2","childCardinality":"n"}]}"#,
        );
        let new = model(
            r#"{"modelName":"m","collections":[
                {"GUID":"e1","collectionName":"Client","properties":[
                    {"GUID":"a1","name":"id","type":"numeric","primaryKey":true},
                    {"GUID":"a2","name":"email","type":"string","required":true,"description":"where to write"},
                    {"GUID":"a4","name":"added","type":"string"}]},
                {"GUID":"e3","collectionName":"New","properties":[]}],
              "relationships":[{"name":"r1","parentCollection":"e1","childCollection":"e3","childCardinality":"1"}]}"#,
        );
        let d = diff(&old, &new);
        assert_eq!(
            d.entities_renamed,
            vec![Renamed {
                from: "Customer".into(),
                to: "Client".into()
            }]
        );
        assert_eq!(d.entities_removed, vec!["Old"]);
        assert_eq!(d.entities_added, vec!["New"]);
        assert_eq!(
            d.attributes_renamed,
            vec![AttributeRenamed {
                entity: "Client".into(),
                from: "mail".into(),
                to: "email".into()
            }]
        );
        assert_eq!(
            d.attributes_removed,
            vec![AttributeRef {
                entity: "Client".into(),
                attribute: "gone".into()
            }]
        );
        assert_eq!(
            d.attributes_added,
            vec![AttributeRef {
                entity: "Client".into(),
                attribute: "added".into()
            }]
        );
        let fields: Vec<(&str, &str)> = d
            .attributes_changed
            .iter()
            .map(|c| (c.attribute.as_str(), c.field.as_str()))
            .collect();
        assert_eq!(
            fields,
            vec![
                ("id", "type"),
                ("email", "required"),
                ("email", "description")
            ]
        );
        let rel: Vec<&str> = d
            .relationships_changed
            .iter()
            .map(|c| c.field.as_str())
            .collect();
        // The parent entity's rename is not a relationship change; the child end really moved.
        assert_eq!(rel, vec!["child", "child_cardinality"]);
        assert!(diff(&new, &new).is_empty());
    }
}
